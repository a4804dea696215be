"""The machine a speed figure was measured on: CPU model, GPU name, torch and its threads.

A latency ratio holds for one machine only (the same chain was 0.6x dense SDPA on one x86
CPU and 1.6x on another: RESULTS.md, issue 22), so every figure sah measures carries this
description."""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path
from typing import Dict, Optional


def cpu_model() -> str:
    """The CPU's model name: ``/proc/cpuinfo`` (``model name``), else ``lscpu``, else
    :func:`platform.processor` (``"unknown CPU"`` when none says)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if found and found.group(1).strip():
            return found.group(1).strip()
    except OSError:
        pass
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        if found and found.group(1).strip():
            return found.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def gpu_name(device: Optional[str] = None) -> Optional[str]:
    """The CUDA device's name (None without a GPU)."""
    import torch
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device) if device and device != "cuda" else None)


def describe_machine(device: str = "cpu") -> Dict[str, object]:
    """``{"cpu", "gpu", "device", "threads", "torch"}``: what a speed figure was measured on
    (``gpu`` None on a CPU-only run; ``threads``: torch's CPU threads)."""
    import torch
    return {"cpu": cpu_model(), "gpu": gpu_name(device) if str(device).startswith("cuda") else None,
            "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__}


def machine_line(machine: Dict[str, object]) -> str:
    """One line: ``Intel(R) Xeon(R) Processor, 2 torch threads, torch 2.13.0`` (the GPU
    first when the figures were measured on one)."""
    where = (f"{machine['gpu']} (CPU {machine['cpu']})" if machine.get("gpu")
             else f"{machine['cpu']}, {machine['threads']} torch threads")
    return f"{where}, torch {machine['torch']}"

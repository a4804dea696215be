"""Speed and memory of the mask resource analysis at the seed's 4096 configuration.

    python benchmark/perf_resources.py [--repeats 3] [--skip_large]

Prints: the analysis time of the normal, strided and fixed masks (size 4096, N = 256,
window 64, stride 64, R = 300; best of ``--repeats``), the peak traced memory of one
analysis of the three (tracemalloc; numpy allocations are traced), the wall time of the
whole ``benchmark/mask_resource_calculator.py`` command run as a subprocess (imports
included) and its peak resident memory, and the time of a 32768 strided mask.
The seed took about 25 s and 2 GB for the 4096 configuration (RESOURCES.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmark"))

from mask_resource_calculator import _import_light  # noqa: E402

resources, _ = _import_light()
CONFIG = dict(size=4096, num_multiplications=256, read_limit=300, window_size=64, stride=64)
SEED_SECONDS, SEED_BYTES = 25.0, 2e9


def analyse_all(order: str = "row_first", zigzag: bool = False):
    return [resources.analyse_pattern(name, CONFIG["size"], CONFIG["num_multiplications"],
                                      CONFIG["read_limit"], window_size=CONFIG["window_size"],
                                      stride=CONFIG["stride"], order=order, zigzag=zigzag)
            for name in resources.SEED_PATTERNS]


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_large", action="store_true", help="skip the 32768 strided mask")
    args = parser.parse_args()
    print(f"configuration: {CONFIG}")
    # the command first, while this process is small (Linux keeps ru_maxrss across fork + exec)
    command = [sys.executable, str(REPO / "benchmark" / "mask_resource_calculator.py"),
               "--mask_size", "4096", "--num_multiplications", "256", "--window_size", "64",
               "--stride", "64", "--read_limit", "300"]
    walls = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
    probe = ("import resource, runpy, sys\nsys.argv = %r\ntry:\n    runpy.run_path(%r, run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)") % (command[1:], command[1])
    rss = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    child_rss_mb = int(rss.stderr.strip().splitlines()[-1]) / 1024  # the command's own peak RSS (KiB on Linux)
    print(f"whole command (subprocess, imports included): best {min(walls):.3f} s "
          f"({SEED_SECONDS / min(walls):.0f}x faster than the seed's whole command), "
          f"peak RSS {child_rss_mb:.0f} MB")
    analyse_all()  # warm-up (first-touch page faults)
    for order, zigzag in (("row_first", False), ("row_first", True), ("column_first", False)):
        seconds = best_time(lambda: analyse_all(order, zigzag), args.repeats)
        print(f"analysis of normal+strided+fixed ({order}{', zigzag' if zigzag else ''}): "
              f"{seconds:.3f} s  ({SEED_SECONDS / seconds:.0f}x faster than the seed's {SEED_SECONDS:.0f} s)")
    tracemalloc.start()
    analyse_all()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"peak traced memory of one analysis (row_first): {peak / 1e6:.1f} MB "
          f"({SEED_BYTES / peak:.0f}x less than the seed's {SEED_BYTES / 1e9:.0f} GB)")
    if not args.skip_large:
        start = time.perf_counter()
        big = resources.analyse_pattern("strided", 32768, 256, 300, window_size=64, stride=64)
        print(f"strided 32768 (N=256, R=300, window 64, stride 64): {time.perf_counter() - start:.2f} s, "
              f"{big.active} active positions, {big.steps} steps, max case {big.max_case.total} reads")
    return 0


if __name__ == "__main__":
    sys.exit(main())

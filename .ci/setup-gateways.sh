#!/usr/bin/env bash
# Create (or check) the separate virtual environment of the gateway tests: a real LiteLLM proxy and real
# NeMo Guardrails, run by tests/integrations/test_litellm_proxy.py and test_nemo_guardrails.py in
# subprocesses. Idempotent: when the venv is already complete it only checks it (a few seconds).
#
#   .ci/setup-gateways.sh                    # -> <repo>/.venv-gateways
#   GRVL_GATEWAYS_VENV=/path .ci/setup-gateways.sh
#   PYTHON=python3.11 .ci/setup-gateways.sh
#
# Why a separate venv: litellm 1.91.5 needs openai<3 (the main venv has openai 3.x) and nemoguardrails'
# fastembed needs huggingface-hub<2 (transformers 5 in the main venv needs 2.x). The tests find it at
# <repo>/.venv-gateways/bin/python, or at $GRVL_GATEWAYS_PYTHON.
#
# Supply chain: litellm 1.82.7 and 1.82.8 on PyPI were malicious (a credential stealer; 1.82.8 added a
# litellm_init.pth that ran at every Python start-up). The gateway packages are installed from the exact
# wheels that were read before use (.ci/gateways-pins.txt, --require-hashes), and the venv is refused if
# any .pth file other than the known ones appears in it. integrations/tested-versions.md has the details.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GRVL_GATEWAYS_VENV:-$ROOT/.venv-gateways}"
PY="$VENV/bin/python"
PINS="$ROOT/.ci/gateways-pins.txt"
export PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$PY" ]; then
    BASE_PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    echo "setup-gateways: creating $VENV with $BASE_PYTHON"
    "$BASE_PYTHON" -m venv "$VENV"
fi

have_pins() {
    "$PY" - "$PINS" <<'PYEOF'
import re, sys
from importlib import metadata
for line in open(sys.argv[1]):
    m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line.strip())
    if not m:
        continue
    try:
        if metadata.version(m.group(1)) != m.group(2):
            sys.exit(1)
    except metadata.PackageNotFoundError:
        sys.exit(1)
PYEOF
}

if ! have_pins || ! "$PY" -c "import litellm.proxy.proxy_server, nemoguardrails" >/dev/null 2>&1; then
    echo "setup-gateways: installing litellm[proxy] and nemoguardrails (a few minutes the first time)"
    # 1) the pinned gateway wheels, checked against the hashes of the wheels that were read
    "$PY" -m pip install --quiet --no-deps --require-hashes -r "$PINS"
    # 2) their dependencies (the pinned packages are already there, so pip keeps them); our own core
    #    dependencies too. torch is never needed here; constraints.txt keeps it off the line anyway.
    "$PY" -m pip install --quiet -c "$ROOT/constraints.txt" \
        "litellm[proxy]==1.91.5" "nemoguardrails==0.24.1" \
        "pydantic>=2.7" "pillow>=10.0" "rich>=13.0" "fastapi>=0.110" "httpx>=0.27" "setuptools>=68" "wheel"
fi

# This project, editable and without dependencies (the proxy imports our CustomGuardrail from it).
if ! "$PY" -c "import setuptools, wheel" 2>/dev/null; then
    "$PY" -m pip install --quiet "setuptools>=68" "wheel"
fi
if ! (cd / && "$PY" -c "import guardreasoner_vl, pathlib, sys; sys.exit(pathlib.Path(guardreasoner_vl.__file__).resolve().parents[1] != pathlib.Path('$ROOT').resolve())") 2>/dev/null; then
    echo "setup-gateways: installing guardreasoner-vl (editable, no dependencies) into $VENV"
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e "$ROOT"
fi

# No start-up hooks but the known ones (the 1.82.8 attack was a .pth file in site-packages).
"$PY" - <<'PYEOF'
import pathlib, site, sys
allowed = ("distutils-precedence.pth", "_virtualenv.pth")
found = [p for d in site.getsitepackages() for p in pathlib.Path(d).glob("*.pth")]
unknown = [p for p in found if p.name not in allowed and not p.name.startswith("__editable__")]
if unknown:
    sys.exit(f"setup-gateways: refusing the venv: unexpected start-up hook(s) {[str(p) for p in unknown]}")
PYEOF

cd / && LITELLM_LOCAL_MODEL_COST_MAP=True "$PY" - <<'PYEOF'
from importlib import metadata
import guardreasoner_vl
import litellm.proxy.proxy_server  # noqa: F401
import nemoguardrails  # noqa: F401
print(f"setup-gateways: ok (litellm {metadata.version('litellm')}, nemoguardrails {metadata.version('nemoguardrails')}, "
      f"openai {metadata.version('openai')}, guardreasoner-vl from {guardreasoner_vl.__file__})")
PYEOF

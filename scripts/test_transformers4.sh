#!/usr/bin/env bash
# Runs the model-integration tests (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision) and the demo against
# transformers 4.57.x; the main environment has 5.x.
#
# transformers 4.57 and the tokenizers / huggingface_hub versions it requires (tokenizers<=0.23.0,
# huggingface_hub<1.0, which still uses requests) are installed with --no-deps into a separate
# directory that goes first on PYTHONPATH. torch, the built svdprune extension and everything else
# come from the active environment, so nothing there is reinstalled or rebuilt.
#
# Usage (from anywhere, after scripts/setup_env.sh):
#   bash scripts/test_transformers4.sh [extra pytest arguments]
# Environment: PYTHON (default: <repo>/.venv/bin/python when present, else python),
# SVDPRUNE_TF4_TARGET (default: <repo>/.venv-tf4).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${SVDPRUNE_TF4_TARGET:-$ROOT/.venv-tf4}"
if [ -x "$ROOT/.venv/bin/python" ]; then
    PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
else
    PYTHON="${PYTHON:-python}"
fi
REQUIREMENTS=(
    "transformers==4.57.*"
    "tokenizers>=0.22,<=0.23.0"
    "huggingface-hub>=0.34,<1.0"
    requests urllib3 certifi charset-normalizer idna
)

installed() {
    PYTHONPATH="$TARGET" "$PYTHON" -c \
        'import sys, transformers; sys.exit(not transformers.__version__.startswith("4.57."))' 2>/dev/null
}

if ! installed; then
    "$PYTHON" -m pip install --quiet --upgrade --no-deps --target "$TARGET" "${REQUIREMENTS[@]}"
    installed || { echo "transformers 4.57 did not import from $TARGET" >&2; exit 1; }
fi

cd "$ROOT"
PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -c \
    'import transformers, tokenizers; print(f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}")'
PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m pytest -q tests/test_llava.py tests/test_demo.py tests/test_llava_next.py tests/test_llava_onevision.py "$@"

#!/usr/bin/env bash
# Runs the whole test suite on a fresh or existing checkout: sets up .venv, builds the
# extension, runs pytest (transformers 5.x), then the model-integration tests under transformers 4.57.
# Extra arguments go to the first pytest run (e.g. -k select -x, or -m "not slow" for a quick check).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
.venv/bin/python -m pytest tests "$@"
if [ -f scripts/test_transformers4.sh ]; then
  bash scripts/test_transformers4.sh
fi

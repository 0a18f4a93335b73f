#!/usr/bin/env bash
# Runs the whole test suite on a fresh or existing checkout: sets up .venv, builds the
# extension, runs pytest, then the LLaVA integration tests again under transformers 4.57, then the
# vLLM plugin's tests in .venv-vllm (skipped with a message where vLLM cannot be installed).
# Extra arguments go to the first pytest run (e.g. -k select -x).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
.venv/bin/python -m pytest tests "$@"
if [ -f scripts/test_transformers4.sh ]; then
  bash scripts/test_transformers4.sh
fi
bash scripts/setup_vllm_env.sh
if [ -e .venv-vllm/.ready ]; then
  # -P: import the svdprune installed in .venv-vllm, not the checkout (whose library is .venv's).
  .venv-vllm/bin/python -P -m pytest -q tests/test_vllm.py
fi

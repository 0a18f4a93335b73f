#!/usr/bin/env bash
# Runs the whole test suite on a fresh or existing checkout: sets up .venv, builds the
# extension, runs pytest (transformers 5.x), then the model-integration tests under transformers 4.57,
# then the vLLM plugin's tests in .venv-vllm and the lmms-eval model's in .venv-eval (each skipped with
# a message where vLLM or lmms-eval cannot be installed).
# Extra arguments go to the first pytest run (e.g. -k select -x, or -m "not slow" for a quick check).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
.venv/bin/python -m pytest tests "$@"
if [ -f scripts/test_transformers4.sh ]; then
  bash scripts/test_transformers4.sh
fi
bash scripts/setup_vllm_env.sh
if [ -e .venv-vllm/.ready ]; then
  # PYTHONSAFEPATH: this process and the ones vLLM starts import the svdprune installed in
  # .venv-vllm, not the checkout in the working directory (whose library is built for .venv).
  PYTHONSAFEPATH=1 .venv-vllm/bin/python -m pytest -q tests/test_vllm.py tests/test_vllm_qwen.py tests/test_vllm_llava_next.py
fi
bash scripts/setup_eval_env.sh
if [ -e .venv-eval/.ready ]; then
  PYTHONSAFEPATH=1 .venv-eval/bin/python -m pytest -q tests/test_lmms_eval.py
fi

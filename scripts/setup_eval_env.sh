#!/usr/bin/env bash
# Creates the lmms-eval venv (lmms-eval 0.7.3 with the torch of .venv) once, reinstalls it when
# this script's pins or requirements-dev.txt's torch change, and installs svdprune into it
# (scripts/install_svdprune.sh: non-editable, CPU kernels, with the entry point through which
# lmms-eval finds the `svdprune` model) again whenever the package's sources change.
#
# When lmms-eval cannot be installed it says so and exits 0 without marking the venv ready;
# scripts/test.sh runs the lmms-eval tests only when .venv-eval/.ready exists.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The venv lives in the user's cache, outside the checkout, so that a fresh clone on the same
# machine (CI's) reuses it instead of installing lmms-eval again; .venv-eval links to it.
venv=${SVDPRUNE_EVAL_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/svdprune/venv-eval}
mkdir -p "$(dirname "$venv")"
ln -sfn "$venv" .venv-eval
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
unavailable() {
  echo "setup_eval_env: lmms-eval could not be installed ($1); the lmms-eval tests are skipped." >&2
  rm -f "$venv/.ready"
  exit 0
}

# What .venv-eval holds; the venv is rebuilt from scratch when any of these change. lmms-eval's
# model modules import decord (its video reader) whatever the task, and simple_evaluate patches
# filelock._api, which filelock 4 does not have; ninja builds svdprune, pytest and scikit-image
# (sample photos) run the tests.
lmms_eval_package="lmms-eval==0.7.3"
torch_package=$(grep -x 'torch==.*' requirements-dev.txt)
others=("torchvision==0.29.1" "transformers==5.24.0" "decord==0.6.0" "qwen-vl-utils==0.0.14" "filelock==3.32.7" ninja pytest scikit-image)

rm -f "$venv/.ready"
stamp="$venv/.requirements-$(echo "$python $lmms_eval_package $torch_package ${others[*]}" | sha256sum | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv" || unavailable "no venv for $python"
  # One resolution of everything, so that pip installs one torch (the one pinned for .venv).
  "$venv/bin/python" -m pip -q install "$lmms_eval_package" "$torch_package" "${others[@]}" ||
    unavailable "pip install $lmms_eval_package failed"
  "$venv/bin/python" -c "import lmms_eval.models.chat.llava_hf, lmms_eval.models.chat.qwen2_5_vl" ||
    unavailable "lmms_eval's models do not import"
  rm -f "$venv"/.requirements-* "$venv"/.svdprune-*
  touch "$stamp"
fi

bash scripts/install_svdprune.sh "$venv" || exit 1
touch "$venv/.ready"

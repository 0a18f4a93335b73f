#!/usr/bin/env bash
# Runs the demo on a fresh or existing checkout; arguments go to `python -m svdprune demo`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup_env.sh
.venv/bin/python -m svdprune demo "$@"

#!/usr/bin/env bash
# Builds svdprune_cuda._C with CMake (the alternative to setup.py) into BUILD_DIR/lib, never into
# svdprune_cuda/, and reports what it built through `python -m svdprune_cuda.info`.
#   scripts/build_cmake.sh [BUILD_DIR]    default build/cmake; SVDPRUNE_WITH_CUDA=ON adds the CUDA kernels
# The library is used by naming it: SVDPRUNE_LIBRARY=BUILD_DIR/lib/_C.abi3.so python ...
# A pip-installed CUDA build of torch asks CMake for a CUDA toolkit even for a CPU build: the
# hints below point it at CUDA_HOME (and at the wheels' nvrtc when the toolkit lacks it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
build_dir=${1:-build/cmake}
cuda_home=${CUDA_HOME:-/usr/local/cuda}

args=(-DCMAKE_PREFIX_PATH="$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
      -DPython_EXECUTABLE="$("$python" -c 'import sys; print(sys.executable)')" -DSVDPRUNE_WITH_CUDA="${SVDPRUNE_WITH_CUDA:-OFF}"
      -DCUDA_TOOLKIT_ROOT_DIR="$cuda_home" -DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc")
nvrtc=$("$python" -c "import nvidia, pathlib; print(next(p for d in nvidia.__path__ for p in sorted(pathlib.Path(d).glob('cu*/lib/libnvrtc.so.*'))))" 2>/dev/null || true)
if [ -n "$nvrtc" ] && ! ls "$cuda_home"/lib64/libnvrtc.so* > /dev/null 2>&1; then
  args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
mkdir -p "$build_dir"
# A cache written for another checkout makes CMake refuse to configure: start that one afresh.
if [ -f "$build_dir/CMakeCache.txt" ] &&
   ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$PWD" "$build_dir/CMakeCache.txt"; then
  rm -rf "$build_dir/CMakeCache.txt" "$build_dir/CMakeFiles"
fi
CUDA_HOME=$cuda_home TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} \
  cmake -S . -B "$build_dir" "${args[@]}" > "$build_dir/configure.log" 2>&1 ||
  { cat "$build_dir/configure.log"; exit 1; }
cmake --build "$build_dir" -j "${MAX_JOBS:-2}"

library=$(cd "$build_dir/lib" && pwd)/_C.abi3.so
SVDPRUNE_LIBRARY=$library "$python" - <<'PY'
import torch

import svdprune_cuda
from svdprune_cuda import info

indices, scores, rank = svdprune_cuda.select(torch.randn(2, 64, 32, dtype=torch.float64), 8)
assert indices.shape == (2, 8) and torch.allclose(scores.sum(-1), rank.double())
info.main()
PY
echo "CMake build OK; use it with SVDPRUNE_LIBRARY=$library"

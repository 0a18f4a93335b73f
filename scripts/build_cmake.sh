#!/usr/bin/env bash
# Builds svdprune_cuda._C with CMake (the alternative to setup.py) and smoke-tests it.
#   scripts/build_cmake.sh [BUILD_DIR]       CPU build; SVDPRUNE_WITH_CUDA=ON adds the CUDA kernels
# With a BUILD_DIR the library stays there; without one it goes into svdprune_cuda/.
# A pip-installed CUDA build of torch asks CMake for a CUDA toolkit; the hints below point it
# at CUDA_HOME and at the nvidia-* wheels for the libraries a bare nvcc install lacks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-.venv/bin/python}
build_dir=${1:-build/cmake}
output_dir=${1:+$build_dir/lib}
output_dir=${output_dir:-$PWD/svdprune_cuda}
cuda_home=${CUDA_HOME:-/usr/local/cuda}
wheels=$("$python" -c "import nvidia, pathlib; print(next(p for p in (pathlib.Path(d) / 'cu13' for d in nvidia.__path__) if p.exists()))" 2>/dev/null || true)

args=(-DCMAKE_PREFIX_PATH="$("$python" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')"
      -DPython_EXECUTABLE="$(command -v "$python")" -DSVDPRUNE_OUTPUT_DIR="$output_dir"
      -DCUDA_TOOLKIT_ROOT_DIR="$cuda_home" -DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc"
      -DSVDPRUNE_WITH_CUDA="${SVDPRUNE_WITH_CUDA:-OFF}")
if [ -n "$wheels" ] && [ ! -e "$cuda_home/include/cusolverDn.h" ]; then
  args+=(-DSVDPRUNE_CUDA_MATH_ROOT="$wheels" -DCUDA_nvrtc_LIBRARY="$(ls "$wheels"/lib/libnvrtc.so.* | head -1)")
fi
mkdir -p "$build_dir"
# A cache written for another checkout makes CMake refuse to configure: start that one afresh.
if [ -f "$build_dir/CMakeCache.txt" ] &&
   ! grep -qxF "CMAKE_HOME_DIRECTORY:INTERNAL=$PWD" "$build_dir/CMakeCache.txt"; then
  rm -rf "$build_dir/CMakeCache.txt" "$build_dir/CMakeFiles"
fi
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} cmake -S . -B "$build_dir" "${args[@]}" > "$build_dir/configure.log" 2>&1 ||
  { cat "$build_dir/configure.log"; exit 1; }
cmake --build "$build_dir" -j "${MAX_JOBS:-2}"

library=$(ls "$output_dir"/_C*.so | head -1)
"$python" - "$library" <<'PY'
import sys
import torch
torch.ops.load_library(sys.argv[1])
indices, scores, rank = torch.ops.svdprune.select(torch.randn(2, 64, 32, dtype=torch.float64), 8)
assert indices.shape == (2, 8) and torch.allclose(scores.sum(-1), rank.double())
print(f"CMake build OK: {sys.argv[1]}")
PY

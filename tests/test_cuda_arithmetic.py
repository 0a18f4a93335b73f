"""The CUDA kernels do the arithmetic the host build and the CPU do: no multiply-add contracted
into a fused one (build_description.CUDA_FLAGS has -fmad=false), checked in the PTX that nvcc
makes of the project's .cu files with the build's own flags. Only the Gaussian sketch's kernels
call math-library functions (log, sincos), whose fused operations are their own."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import build_description  # noqa: E402

sys.path.pop(0)

CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")
NVCC = shutil.which("nvcc", path=str(Path(CUDA_HOME) / "bin"))
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found (CUDA_HOME)")
# Kernels whose fused operations come from the math library they call.
MATH_LIBRARY_KERNELS = ("gaussian_kernel", "solve_rows_kernel")
FUSED = re.compile(r"\bfma\.rn\.f(32|64)\b")


def kernel_ptx(source: str, flags) -> dict[str, str]:
    """{mangled kernel name: its PTX} of one .cu file compiled for sm_90."""
    includes, _ = build_description.cuda_math_libraries(CUDA_HOME)
    ptx = subprocess.run(
        [NVCC, *flags, "-arch=sm_90", "-std=c++17", "-ptx", *(f"-I{i}" for i in includes), str(ROOT / source), "-o", "-"],
        capture_output=True, text=True, check=True,
    ).stdout
    return {entry.split("(")[0]: entry for entry in re.split(r"\.entry\s+", ptx)[1:]}


CUDA_SOURCES = [source for source in build_description.sources(cuda=True) if source.endswith(".cu")]


@pytest.mark.slow
@pytest.mark.parametrize("source", CUDA_SOURCES)
def test_kernels_have_no_fused_multiply_add(source):
    kernels = kernel_ptx(source, build_description.CUDA_FLAGS)
    assert kernels, f"no kernel in {source}"
    fused = {name for name, ptx in kernels.items() if FUSED.search(ptx) and not any(k in name for k in MATH_LIBRARY_KERNELS)}
    assert not fused, f"fused multiply-adds in {sorted(fused)}"


@pytest.mark.slow
def test_without_the_flag_nvcc_fuses_the_pivot_loops():
    # What the check above would see without -fmad=false: the pivot kernel's norm and
    # projection loops become fused multiply-adds.
    flags = [flag for flag in build_description.CUDA_FLAGS if flag != "-fmad=false"]
    kernels = kernel_ptx("csrc/cuda/leverage.cu", flags)
    pivot = [ptx for name, ptx in kernels.items() if "pivot_kernel" in name]
    assert len(pivot) == 2 and all(FUSED.search(ptx) for ptx in pivot)

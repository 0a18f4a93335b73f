"""How svdprune_cuda._C is built: its sources, flags, build facts and where cuSOLVER/cuBLAS
come from, written once for both builds.

setup.py imports it; CMakeLists.txt runs ``python build_description.py [--cuda]``, which prints
the same as CMake ``set()`` commands.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

ROOT = Path(__file__).parent.resolve()

CPU_SOURCES = ("csrc/ops.cpp", "csrc/cpu/*.cpp")
CUDA_SOURCES = ("csrc/cuda/*.cpp", "csrc/cuda/*.cu")
# NDEBUG as in torch's own release build: it turns off the debug-only assertions of torch's
# inline headers, whose messages are formatted with iostreams (see throw_error in csrc/svdprune.h).
CXX_FLAGS = ("-O3", "-DNDEBUG")
# No --use_fast_math: the pivot kernel's 1/sqrt must match the CPU's bit for bit, and the
# kernels are latency-bound, so fast math would buy nothing. -fmad=false for the same reason:
# nvcc would contract a * b + c into one fused multiply-add, rounded once, where the CPU and the
# host build round the product and the sum apart, so near-ties (near-duplicate tokens) could pick
# other tokens on the GPU. The math library's own functions (log, sincos: the Gaussian sketch)
# keep their fused operations; the project's kernels have none (tests/test_cuda_arithmetic.py).
CUDA_FLAGS = ("-O3", "-lineinfo", "-fmad=false")
# Linked ahead of torch's libraries, which re-export some libstdc++ symbols without versions:
# bound to those, the library's references to the C++ runtime would be unversioned, and the
# loader's check that the runtime is as new as the compiler's would not apply
# (scripts/check_library_symbols.sh checks the result).
LINK_FIRST = ("stdc++",)
# The library uses the stable ABI of CPython 3.10+ only (no pybind11, no libtorch_python),
# so one build serves every Python version; torch's setup.py helpers add the same define.
LIMITED_API = "0x030A0000"
# header and library name of each CUDA math library the CUDA kernels call.
CUDA_MATH_LIBRARIES = {"cusolver": "cusolverDn.h", "cublas": "cublas_v2.h"}


def sources(cuda: bool) -> list[str]:
    """Source files relative to the repository root."""
    patterns = CPU_SOURCES + (CUDA_SOURCES if cuda else ())
    return [str(path.relative_to(ROOT)) for pattern in patterns for path in sorted(ROOT.glob(pattern))]


def cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST, else the compute capabilities of the visible GPUs (what torch's
    build helpers would pick), as ``"8.0;9.0"``."""
    chosen = os.getenv("TORCH_CUDA_ARCH_LIST", "").strip()
    if chosen:
        return ";".join(chosen.replace(",", " ").replace(";", " ").split())
    import torch

    capabilities = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    if not capabilities:
        raise RuntimeError("no GPU visible to pick CUDA architectures from: set TORCH_CUDA_ARCH_LIST, e.g. 9.0")
    return ";".join(f"{major}.{minor}" for major, minor in sorted(capabilities))


def defines(cuda: bool, arch_list: str) -> dict[str, str]:
    """Definitions for the C++ sources (the .cu files need none): the limited API, and the build
    facts ``_C.build_info()`` reports (see csrc/ops.cpp)."""
    import torch

    facts = {"Py_LIMITED_API": LIMITED_API, "SVDPRUNE_TORCH_VERSION": torch.__version__}
    if cuda:
        # Commas, not semicolons: the value passes through shells and CMake lists unquoted (and
        # never through nvcc, which would split it at the commas).
        facts.update(SVDPRUNE_WITH_CUDA="1", SVDPRUNE_CUDA_ARCH_LIST=arch_list.replace(";", ","))
    return facts


def cuda_math_libraries(cuda_home: str) -> tuple[list[str], list[str]]:
    """(include directories, library files) for cuSOLVER and cuBLAS.

    A full toolkit has them under ``cuda_home``: nothing to add, the linker finds them by name.
    A bare nvcc install does not; then they come from the NVIDIA wheels torch depends on
    (``nvidia/cu13``, ``nvidia/cu12``, or one wheel per library as in ``nvidia/cusolver``).
    """
    if all((Path(cuda_home) / "include" / header).exists() for header in CUDA_MATH_LIBRARIES.values()):
        return [], []
    import nvidia

    includes, libraries = [], []
    for name, header in CUDA_MATH_LIBRARIES.items():
        candidates = [Path(base) / folder for base in nvidia.__path__ for folder in ("cu13", "cu12", name)]
        for candidate in candidates:
            found = sorted((candidate / "lib").glob(f"lib{name}.so.[0-9]*"))
            if (candidate / "include" / header).exists() and found:
                includes.append(str(candidate / "include"))
                libraries.append(str(found[0]))
                break
        else:
            raise RuntimeError(f"{header} not found in {cuda_home}/include nor in the nvidia-* wheels")
    return sorted(set(includes)), libraries


def cmake_commands(cuda: bool, cuda_home: str) -> str:
    """The description as CMake ``set()`` commands (lists are ``;``-joined)."""
    values = {
        "SVDPRUNE_SOURCES": sources(cuda),
        "SVDPRUNE_CXX_FLAGS": list(CXX_FLAGS),
        "SVDPRUNE_CUDA_FLAGS": list(CUDA_FLAGS),
        "SVDPRUNE_LINK_FIRST": list(LINK_FIRST),
        "SVDPRUNE_DEFINES": [f"{key}={value}" for key, value in defines(cuda, cuda_arch_list() if cuda else "").items()],
    }
    if cuda:
        includes, libraries = cuda_math_libraries(cuda_home)
        values.update(SVDPRUNE_CUDA_MATH_INCLUDES=includes, SVDPRUNE_CUDA_MATH_LIBRARIES=libraries)
    return "".join(f'set({name} "{";".join(items)}")\n' for name, items in values.items())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Print the build description as CMake set() commands.")
    parser.add_argument("--cuda", action="store_true", help="with the CUDA kernels")
    parser.add_argument("--cuda-home", default=os.getenv("CUDA_HOME", "/usr/local/cuda"))
    arguments = parser.parse_args()
    print(cmake_commands(arguments.cuda, arguments.cuda_home), end="")

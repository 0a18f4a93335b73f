"""Builds svdprune_cuda._C (CPU kernels, plus CUDA kernels when built with CUDA); the package
metadata is in pyproject.toml, the sources and flags in build_description.py.

Switches (environment variables):
  SVDPRUNE_FORCE_CPU=1   build the CPU kernels only, even where CUDA is available
  FORCE_CUDA=1           build the CUDA kernels even without a visible GPU (needs nvcc via
                         CUDA_HOME and an explicit TORCH_CUDA_ARCH_LIST, e.g. "9.0")
Without either, CUDA is built when torch sees a GPU and nvcc is found.
"""

import os
import sys
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT))
import build_description  # noqa: E402

sys.path.pop(0)
# Earlier versions built a version-specific _C.cpython-*.so in place, which Python would load
# before the _C.abi3.so built now.
for stale in (ROOT / "svdprune_cuda").glob("_C.cpython-*.so"):
    stale.unlink()


def with_cuda() -> bool:
    if os.getenv("SVDPRUNE_FORCE_CPU", "0") == "1":
        return False
    if os.getenv("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def extension():
    cuda = with_cuda()
    arch_list = build_description.cuda_arch_list() if cuda else ""
    if cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch_list  # torch compiles for exactly what the library reports
    defines = [f"-D{key}={value}" for key, value in build_description.defines(cuda, arch_list).items()]
    cxx_flags = [*build_description.CXX_FLAGS, *defines]
    if not cuda:
        return CppExtension(
            "svdprune_cuda._C",
            build_description.sources(cuda),
            libraries=list(build_description.LINK_FIRST),  # torch's helpers append their libraries after these
            extra_compile_args={"cxx": cxx_flags},
            py_limited_api=True,
        )
    includes, libraries = build_description.cuda_math_libraries(CUDA_HOME)
    return CUDAExtension(
        "svdprune_cuda._C",
        build_description.sources(cuda),
        include_dirs=includes,
        libraries=[*build_description.LINK_FIRST, *([] if libraries else build_description.CUDA_MATH_LIBRARIES)],
        extra_compile_args={"cxx": cxx_flags, "nvcc": list(build_description.CUDA_FLAGS)},
        extra_link_args=[*libraries, *(f"-Wl,-rpath,{Path(library).parent}" for library in libraries)],
        py_limited_api=True,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)

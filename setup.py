"""Builds svdprune_cuda._C (CPU kernels, plus CUDA kernels when built with CUDA) and installs
the `svdprune_cuda` (op) and `svdprune` (LLaVA integration, tools) packages.

Switches (environment variables):
  SVDPRUNE_FORCE_CPU=1   build the CPU kernels only, even where CUDA is available
  FORCE_CUDA=1           build the CUDA kernels even without a visible GPU (needs nvcc via
                         CUDA_HOME and an explicit TORCH_CUDA_ARCH_LIST, e.g. "9.0")
Without either, CUDA is built when torch sees a GPU and nvcc is found.
"""

import glob
import os
import sys
from pathlib import Path

from setuptools import setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent.resolve()
sys.path.insert(0, str(ROOT / "svdprune_cuda"))
from _version import __version__  # noqa: E402

sys.path.pop(0)


def with_cuda() -> bool:
    if os.getenv("SVDPRUNE_FORCE_CPU", "0") == "1":
        return False
    if os.getenv("FORCE_CUDA", "0") == "1":
        if CUDA_HOME is None:
            raise RuntimeError("FORCE_CUDA=1 but no CUDA toolkit was found: set CUDA_HOME")
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def cuda_math_libraries():
    """Include dir, library dir and link flags for cuSOLVER/cuBLAS/cuRAND.

    A full toolkit has them under CUDA_HOME; a bare nvcc install does not, and then the
    headers and libraries come from the NVIDIA wheels that torch depends on.
    """
    toolkit_include = Path(CUDA_HOME) / "include"
    if (toolkit_include / "cusolverDn.h").exists():
        return [], [], ["-lcusolver", "-lcublas"]
    import nvidia

    for base in map(Path, nvidia.__path__):
        for candidate in [base / "cu13", base / "cu12", base / "cusolver"]:
            if (candidate / "include" / "cusolverDn.h").exists():
                lib = candidate / "lib"
                cusolver = sorted(lib.glob("libcusolver.so.*"))[0].name
                cublas = sorted(p for p in lib.glob("libcublas.so.*"))[0].name
                flags = [f"-l:{cusolver}", f"-l:{cublas}", f"-Wl,-rpath,{lib}"]
                return [str(candidate / "include")], [str(lib)], flags
    raise RuntimeError("cusolverDn.h not found in CUDA_HOME or in the nvidia-* wheels")


def write_build_config(cuda: bool) -> None:
    """Records how the extension was built, for `python -m svdprune_cuda.info`."""
    arch_list = os.getenv("TORCH_CUDA_ARCH_LIST", "") if cuda else ""
    (ROOT / "svdprune_cuda" / "_build_config.py").write_text(
        "# Written by setup.py at build time.\n"
        f"WITH_CUDA = {cuda!r}\n"
        f"CUDA_ARCH_LIST = {arch_list!r}\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
    )


def extension():
    write_build_config(with_cuda())
    sources = ["csrc/ops.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx_flags = ["-O3"]
    if not with_cuda():
        return CppExtension("svdprune_cuda._C", sources, extra_compile_args={"cxx": cxx_flags})
    include_dirs, library_dirs, link_flags = cuda_math_libraries()
    sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
    return CUDAExtension(
        "svdprune_cuda._C",
        sources,
        include_dirs=include_dirs,
        library_dirs=library_dirs,
        extra_compile_args={
            "cxx": cxx_flags + ["-DSVDPRUNE_WITH_CUDA"],
            "nvcc": ["-O3", "--use_fast_math", "-lineinfo", "-DSVDPRUNE_WITH_CUDA"],
        },
        extra_link_args=link_flags,
    )


setup(
    name="svdprune",
    version=__version__,
    description="CUDA-accelerated SVD-based vision-token pruning for vision-language models",
    packages=["svdprune_cuda", "svdprune", "svdprune.testing", "svdprune.vllm"],
    package_dir={"svdprune_cuda": "svdprune_cuda", "svdprune": "python/svdprune"},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy"],
    extras_require={
        "llava": ["transformers>=4.57", "tokenizers", "safetensors", "pillow"],
        "demo": ["scikit-image", "matplotlib", "pillow", "transformers>=4.57", "tokenizers"],
        "vllm": ["vllm>=0.32"],
        "test": ["pytest", "pytest-benchmark", "scipy", "scikit-image", "scikit-learn", "matplotlib"],
    },
    entry_points={
        "console_scripts": ["svdprune = svdprune.__main__:main"],
        "vllm.general_plugins": ["svdprune = svdprune.vllm:register"],
    },
)

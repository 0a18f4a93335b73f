"""The CUDA backend run on the host: csrc/cuda/ops_impl.h, leverage.cu and select.cu compiled
by the host C++ compiler against the stand-ins of tests/cuda_host (CUDA runtime with a kernel
emulation, cuBLAS, cuSOLVER), as a torch extension built on first use and cached under the
system's temporary directory, keyed by a hash of its sources. The functions take CPU tensors and
return what svdprune_cuda's ops return on a GPU."""

import hashlib
import tempfile
from pathlib import Path

import torch
import torch.utils.cpp_extension

import svdprune_cuda

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "tests" / "cuda_host"
SOURCES = [ROOT / "tests" / "cuda_on_host.cpp", HOST / "leverage_cu.cpp", HOST / "select_cu.cpp"]
_extension = None


def extension():
    """The compiled host build (built once per set of sources)."""
    global _extension
    if _extension is None:
        inputs = sorted([*SOURCES, *HOST.glob("*.h"), *(ROOT / "csrc").glob("*.h"), *(ROOT / "csrc" / "cuda").glob("*")])
        digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in inputs)).hexdigest()[:16]
        build = Path(tempfile.gettempdir()) / "svdprune_cuda_on_host" / digest
        build.mkdir(parents=True, exist_ok=True)
        # The argument checks shared by all backends (csrc/ops.cpp) come from the installed
        # svdprune_cuda._C; the host build's own definitions of the CUDA backend come first.
        library = Path(svdprune_cuda._C.__file__)
        _extension = torch.utils.cpp_extension.load(
            name=f"svdprune_cuda_on_host_{digest}",
            sources=[str(p) for p in SOURCES],
            extra_include_paths=[str(HOST), str(ROOT / "csrc" / "cuda")],
            extra_cflags=["-O2", "-std=c++20", "-pthread"],
            extra_ldflags=[str(library), f"-Wl,-rpath,{library.parent}", "-pthread"],
            build_directory=str(build),
        )
    return _extension


def select(features, budget, variance=0.9, method="exact", seed=0, strategy="leverage", *, center=False):
    return tuple(extension().select(features, budget, variance, method, center, seed, strategy))


def leverage(features, variance=0.9, method="exact", seed=0, *, center=False):
    return tuple(extension().leverage(features, variance, method, center, seed))


def select_adaptive(features, variance=0.9, min_tokens=1, max_tokens=-1, method="exact", seed=0, *, center=False):
    return tuple(extension().select_adaptive(features, variance, min_tokens, max_tokens, method, center, seed))

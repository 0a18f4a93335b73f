"""Build information: ``python -m svdprune_cuda.info``."""

from __future__ import annotations

import platform

import torch

import svdprune_cuda
from svdprune_cuda import _C


def cpu_name() -> str:
    """The processor's model name from /proc/cpuinfo, or what ``platform`` knows of it."""
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def build_info() -> dict[str, object]:
    """Versions, and the build facts the loaded library reports about itself."""
    built = _C.build_info()
    cusolver = built["cusolver_version"]
    return {
        "svdprune_cuda": svdprune_cuda.__version__,
        "library": _C.__file__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch built against": built["torch_version"],
        "built with CUDA": built["with_cuda"],
        "CUDA arch list": built["cuda_arch_list"].replace(",", ";") or "-",
        "cuSOLVER": "-" if cusolver is None else f"{cusolver // 1000}.{cusolver % 1000 // 100}.{cusolver % 100}",
        # The largest eigenproblem the CUDA ops run while a CUDA graph is being captured.
        "captured eigenproblems": "-" if built["max_captured_eigen_size"] is None else f"up to n={built['max_captured_eigen_size']}",
        "CUDA kernels registered": torch._C._dispatch_has_kernel_for_dispatch_key("svdprune::select", "CUDA"),
        "CPU": cpu_name(),
        "GPU": torch.cuda.get_device_name() if torch.cuda.is_available() else "none visible",
    }


def main() -> None:
    for key, value in build_info().items():
        print(f"{key:>24}: {value}")


if __name__ == "__main__":
    main()

"""Build information: ``python -m svdprune.info`` (the same as ``python -m svdprune_cuda.info``)."""

from svdprune_cuda.info import build_info, main

__all__ = ["build_info", "main"]

if __name__ == "__main__":
    main()

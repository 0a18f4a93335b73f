"""`python -m svdprune.info`: the build facts come from the loaded library and agree with what it
registered; SVDPRUNE_LIBRARY selects another build of the library."""

import subprocess
import sys

import pytest
import torch

import svdprune
from svdprune.info import build_info


def test_build_facts_come_from_the_library():
    info = build_info()
    assert info["library"] == svdprune.info.build_info()["library"]
    assert info["library"].endswith(".abi3.so")  # one build for every Python >= 3.10
    assert info["torch built against"] == torch.__version__
    assert info["built with CUDA"] == info["CUDA kernels registered"]
    assert (info["CUDA arch list"] != "-") == info["built with CUDA"]
    assert (info["cuSOLVER"] != "-") == info["built with CUDA"]
    assert (info["captured eigenproblems"] != "-") == info["built with CUDA"]


@pytest.mark.slow
@pytest.mark.parametrize("module", ["svdprune.info", "svdprune_cuda.info"])
def test_command_prints_the_facts(module):
    out = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, check=True).stdout
    assert "torch built against" in out and "built with CUDA" in out and "library" in out
    assert torch.__version__ in out


@pytest.mark.slow
def test_library_named_by_environment(tmp_path):
    bogus = tmp_path / "_C.abi3.so"
    bogus.write_text("not a library")
    result = subprocess.run(
        [sys.executable, "-c", "import svdprune_cuda"], capture_output=True, text=True, env={"SVDPRUNE_LIBRARY": str(bogus)}
    )
    assert result.returncode != 0 and "svdprune_cuda._C could not be loaded" in result.stderr
    assert str(bogus) in result.stderr


def test_reference_imports_as_a_submodule():
    # A fresh interpreter, so that no earlier import has put the module in sys.modules.
    code = "import svdprune.reference, svdprune_cuda.reference; assert svdprune.reference is svdprune_cuda.reference"
    subprocess.run([sys.executable, "-c", code], check=True)

"""scripts/gpu_check.sh without a GPU: the steps it would run, and the eigensolver matrix's cases."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["build", "info", "toolchain", "error-probes", "eigensolver-matrix", "cuda-tests"]


def dry_run(*flags: str) -> list[str]:
    done = subprocess.run(["bash", "scripts/gpu_check.sh", *flags, "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, check=True, env={"PATH": "/usr/bin:/bin", "PY": sys.executable})
    return done.stdout.splitlines()


def step_names(lines: list[str]) -> list[str]:
    return [line.split(":")[0] for line in lines if not line.startswith((" ", "eigensolver-matrix cases"))]


def test_quick_runs_the_build_the_probes_the_matrix_and_the_cuda_tests():
    assert step_names(dry_run("--quick")) == QUICK


def test_the_full_check_adds_the_op_tests_benchmarks_and_sanitizers_and_lists_the_matrix():
    lines = dry_run()
    assert step_names(lines) == QUICK + ["cuda-op-tests", "benchmark", "memory", "memcheck", "racecheck", "synccheck"]
    cases = {tuple(part.split("=")[1] for part in line.split()) for line in lines if line.startswith("  n=")}
    sizes = {"64", "128", "256", "576", "1024", "2880"}
    solvers = {"xsyevbatched", "xsyevbatched-alg1", "syevjbatched", "syevj"}
    assert cases == {(n, solver, mode) for n in sizes for solver in solvers for mode in ("eager", "global", "relaxed")}


def test_an_unknown_flag_is_a_usage_error():
    done = subprocess.run(["bash", "scripts/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr

"""Calls from several Python threads at once give the results of the same calls made one by one."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from helpers import SPECTRUM, TORCH_DEVICES, designed, run_on

THREADS = 8


def calls():
    """(op, features, args): every op, method and strategy, on shapes on both sides of N = D."""
    wide = designed(576, 400, SPECTRUM, noise=1e-3, batch=2).float()
    tall = designed(300, 96, SPECTRUM, noise=1e-2, batch=3).half()
    single = designed(128, 128, SPECTRUM, noise=1e-2).double()
    noise = torch.randn(2, 200, 260, generator=torch.Generator().manual_seed(0))
    select, leverage, adaptive = torch.ops.svdprune.select, torch.ops.svdprune.leverage, torch.ops.svdprune.select_adaptive
    return [
        (select, wide, (64, 0.9, "exact")),
        (select, wide, (32, 0.9, "randomized", False, 1)),
        (select, wide, (16, 0.9, "auto", True, 0, "pivoted")),
        (select, tall, (20, 0.95, "exact", False, 0, "pivoted")),
        (select, noise, (40, 0.5, "randomized")),
        (leverage, single, (0.99, "exact", True)),
        (leverage, tall, (0.9, "randomized", False, 5)),
        (adaptive, wide, (0.9, 4, 100, "exact")),
        (adaptive, noise, (0.8, 1, -1, "randomized")),
        (adaptive, single, (0.9, 1, -1, "auto", True)),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_concurrent_calls_match_serial_calls(device):
    work = calls()
    serial = [run_on(device, op, x, *args) for op, x, args in work]
    # Each call twice, interleaved, so that different calls overlap.
    order = [i for _ in range(2) for i in range(len(work))]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = [(i, pool.submit(run_on, device, work[i][0], work[i][1], *work[i][2])) for i in order]
        for i, future in futures:
            for got, want in zip(future.result(), serial[i]):
                assert torch.equal(got, want), (i, work[i][2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_threads_on_their_own_cuda_streams_match_serial_calls():
    # Each thread queues its calls on a stream of its own, without waiting for them: the
    # eigensolvers of different streams overlap on the GPU, each on a handle of its stream's.
    work = calls()
    serial = [run_on("cuda", op, x, *args) for op, x, args in work]
    inputs = [x.cuda() for _, x, _ in work]

    def on_a_stream_of_its_own(_):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            outputs = [op(x, *args) for (op, _, args), x in zip(work, inputs) for _ in range(2)]
        stream.synchronize()
        return outputs

    with ThreadPoolExecutor(max_workers=4) as pool:
        for outputs in pool.map(on_a_stream_of_its_own, range(4)):
            for i, output in enumerate(outputs):
                for got, want in zip(output, serial[i // 2]):
                    assert torch.equal(got.cpu(), want), work[i // 2][2]

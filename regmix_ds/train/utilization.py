"""How close to the hardware a run is: the device's measured matmul peak, and model FLOPs utilisation.

Vendor peaks are not what torch reaches on a given machine (CPU cores, clocks, BLAS), so the
peak is measured: the best of a few large square matrix products in the training process
itself, in the training precision, with the threads the run will use. MFU is then the model's
arithmetic (`model.training_flops_per_token` per token) over that peak, as in the PaLM paper.
The planner (`train.budget`) also takes the device's memory bandwidth from a probe here.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

PROBE_SIZE = {"cpu": 2048, "cuda": 8192}
"""Matrix side of the probe: a fraction of a second per product on a 2-core CPU and on an H200."""


def measure_matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        size: int | None = None, repeats: int = 3) -> float:
    """The best FLOP/s of `repeats` [size x size] products on `device` (after one warm-up).

    Random operands come from a local generator; the value does not matter, only the time.
    """
    device = torch.device(device)
    size = size or PROBE_SIZE.get(device.type, 4096)
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.rand(size, size, generator=generator).to(device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best


BANDWIDTH_PROBE = {"cpu": 2**26, "cuda": 2**28}
"""Elements of the bandwidth probe's fp32 operands: 256 MiB on a CPU (past its caches), 1 GiB on a GPU."""


def measure_bandwidth(device: torch.device | str = "cpu", elements: int | None = None, repeats: int = 3) -> float:
    """Memory bandwidth in bytes/s as PyTorch's operators see it: the best of `repeats` `a + b` over
    long fp32 vectors (12 bytes an element), each into a fresh output as an operator allocates one.
    On a CPU that includes the page faults of fresh memory (a large share of an operator's time
    there); a GPU's caching allocator has none."""
    device = torch.device(device)
    elements = elements or BANDWIDTH_PROBE.get(device.type, 2**26)
    a, b = torch.ones(elements, device=device), torch.ones(elements, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        out = a + b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
        del out
    return 12.0 * elements / best


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so a timer measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
"""DeepSpeed's precision names (`DeepSpeedSettings.precision`) -> the dtype the matmuls run in."""


@dataclass(frozen=True)
class Utilization:
    """A run's model FLOPs per token and the peak FLOP/s of all the devices it runs on."""

    flops_per_token: float
    peak_flops_per_s: float

    def mfu(self, tokens_per_s: float) -> float:
        """Fraction of the measured peak the model's own arithmetic uses at `tokens_per_s`."""
        return tokens_per_s * self.flops_per_token / self.peak_flops_per_s

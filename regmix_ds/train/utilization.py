"""How close to the hardware a run is: the device's measured matmul peak, and model FLOPs utilisation.

Vendor peaks are not what torch reaches on a given machine (CPU cores, clocks, BLAS), so the
peak is measured: the best of a few large square matrix products in the training process
itself, in the training precision, with the threads the run will use. MFU is then the model's
arithmetic (`model.training_flops_per_token` per token) over that peak, as in the PaLM paper.
The planner (`train.budget`) also takes the device's memory bandwidth from a probe here, and on a
CPU times the step's own matrix products and elementwise operators with the dispatch modes here.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

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


def measure_fresh_page_seconds(elements: int | None = None, repeats: int = 3) -> float:
    """Seconds per byte a CPU spends faulting in fresh memory: the best time of filling a newly
    allocated fp32 tensor of `elements` (256 MiB: glibc maps a block that large fresh from the
    system) less that of filling the same size already touched, over its bytes."""
    elements = elements or BANDWIDTH_PROBE["cpu"]
    touched = torch.zeros(elements)

    def best(fill) -> float:
        seconds = float("inf")
        for _ in range(repeats + 1):
            start = time.perf_counter()
            filled = fill()
            seconds = min(seconds, time.perf_counter() - start)
            del filled
        return seconds

    fresh = best(lambda: torch.empty(elements).fill_(1.0))
    return max(fresh - best(lambda: touched.fill_(1.0)), 0.0) / (4.0 * elements)


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


# ---- the training step's own operators, for the planner (`train.budget`) ------------------------------

MATMULS = frozenset({"bmm", "mm", "_scaled_dot_product_flash_attention_for_cpu",
                     "_scaled_dot_product_flash_attention_for_cpu_backward"})
"""The step's matrix products on a CPU (below autograd): batched products and flash attention."""
NOT_MOVING = frozenset({"detach", "empty", "empty_like", "new_empty", "new_empty_strided"})
"""Operators that move no data: allocations and detaching."""


def moved_bytes(func, args, kwargs, out) -> int | None:
    """Bytes an elementwise operator reads and writes (inputs plus outputs, one-element tensors left
    out), as the planner counts them; None for a view, an allocation or a matrix product."""
    name = func._overloadpacket.__name__
    if func.is_view or name in NOT_MOVING or name in MATMULS:
        return None
    tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors if t.numel() > 1)


class ElementwiseTimer(TorchDispatchMode):
    """Times the elementwise operators run below autograd and counts the bytes they move (a CPU:
    an operator is done when it returns)."""

    def __init__(self):
        super().__init__()
        self.seconds, self.bytes = 0.0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        seconds = time.perf_counter() - start
        moved = moved_bytes(func, args, kwargs or {}, out)
        if moved is not None:
            self.seconds, self.bytes = self.seconds + seconds, self.bytes + moved
        return out


@dataclass(frozen=True)
class TensorLayout:
    """What a recorded product needs of an operand to run it again."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: torch.dtype

    def random(self, device: torch.device) -> torch.Tensor:
        """A tensor of this layout on `device` (values only need to be finite)."""
        tensor = torch.empty_strided(self.shape, self.strides, dtype=self.dtype, device=device)
        return tensor.uniform_() if self.dtype.is_floating_point else tensor.zero_()


def layout(value):
    """A tensor argument as its `TensorLayout`; other arguments as they are."""
    if isinstance(value, torch.Tensor):
        return TensorLayout(tuple(value.shape), tuple(value.stride()), value.dtype)
    return value


class MatmulRecorder(TorchDispatchMode):
    """Records each distinct matrix product (operator, operand layouts, other arguments) and how often
    it runs. Under `FakeTensorMode` the products are only shapes: nothing is allocated or computed."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket.__name__ in MATMULS:
            self.calls[(func, tree_map(layout, args), tuple(sorted(tree_map(layout, kwargs or {}).items())))] += 1
        return func(*args, **(kwargs or {}))


def replay_seconds(calls: collections.Counter, device: torch.device, repeats: int = 2) -> float:
    """Seconds the recorded products take on `device`: each distinct call run on random operands of its
    layout, the best of `repeats` after one warm-up, times how often it runs."""
    def real(value):
        return value.random(device) if isinstance(value, TensorLayout) else value

    total = 0.0
    for (func, args, kwargs), count in calls.items():
        args, kwargs = tree_map(real, args), {name: real(value) for name, value in kwargs}
        best = float("inf")
        for _ in range(repeats + 1):
            synchronize(device)
            start = time.perf_counter()
            func(*args, **kwargs)
            synchronize(device)
            best = min(best, time.perf_counter() - start)
        total += count * best
    return total

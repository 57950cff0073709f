"""What a swarm costs before it runs: FLOPs, a group's peak memory and step time, the largest group a
device holds, and the swarm size to train (`regmix-ds plan`). Arithmetic on the model's shape and
three numbers of the device; nothing here trains or allocates a model.

**Memory of a group of K** (one process, `train.group`), in bytes, P parameters a member:

    16 P K                   fp32 weights, gradients and the two AdamW moments
    + activations            what autograd keeps for the backward pass: per token and layer
                             40 H + 16 F + 2 heads + 16 (fp32; 34 H + 8 F + ... under bf16 autocast),
                             12 H + 26 per token besides, and the head's gradient (4 V H K), which
                             the fused loss takes in the forward pass (`stacked.HeadLoss`)
    + 2 W K                  bf16 autocast's copies of the layers' matrices (W a member), bf16 only
    + 8 x the loss chunk     the logits the loss holds at once (`stacked.LOSS_CHUNK`), fp32 and softmax
    + 4 x the largest tensor the AdamW step's one scratch tensor (`group.AdamW.step`)

The peak is the larger of the forward/backward phase (weights, moments, activations, chunk) and
the optimizer phase (weights, gradients, moments, scratch), plus the process itself on a CPU (its
resident memory before the group is built, measured) and the fresh member the trainer keeps to
stack from (12 P, on the host). The per-token coefficients are the bytes `saved_tensors_hooks`
sees the stacked model save (`tests/test_plan.py` recounts them).

**Time of an optimizer step** (A micro-batches): a roofline with an overhead term,

    matmul seconds + elementwise bytes / bandwidth + fresh bytes x page cost + operators x op cost

summed over the A forward/backward passes and the AdamW step (on a GPU, which runs kernels while
Python issues the next, the larger of the work and the issuing). On a CPU the matrix products are
timed at the step's own shapes (`measure_matmul_seconds`: traced on fake tensors, each distinct
batched product and flash attention, forward and backward, run once on random operands); on a GPU
they are PaLM's model FLOPs (`model.training_flops_per_token`) at the peak, stated
(`--gpu-peak-tflops`) or measured by one large product. The bytes and operator counts of the
elementwise work were counted by a `TorchDispatchMode` over the real step (inputs plus outputs of
every operator that is not a matrix product or a view; `tests/test_plan.py` recounts them): per
token and layer 528 H + 53 F bytes in fp32, the loss 34 V bytes a token, the AdamW step 116 bytes a
parameter. On a CPU the bandwidth is that of the step's own elementwise operators
(`measure_step_bandwidth`), and blocks of 32 MiB or more, which glibc maps fresh, add the cost of
faulting their pages in (`fresh_bytes`, `utilization.measure_fresh_page_seconds`); a GPU's
bandwidth is `a + b` on long vectors, or stated. Checked against measured runs by
`benchmarks/plan_check.py` (README, "Planning a swarm").
"""
from __future__ import annotations

import dataclasses
import math
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path

from regmix_ds.core.config import ExperimentConfig, ModelShape, PlanConfig, load_shape
from regmix_ds.core.dsconfig import load_ds_config
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.manifest import Manifest
from regmix_ds.train.stacked import LOSS_CHUNK

REGMIX_RUNS, REGMIX_DOMAINS = 512, 17
"""RegMix trained 512 proxies for the 17 Pile domains it used; Olmix reports that the swarm a fit
needs grows linearly with the number of domains, so the planner advises the same runs per domain."""

GPU_OP_SECONDS = 1e-5
"""Cost of one operator on a GPU that is stated rather than measured: eager PyTorch issuing one
kernel from Python. An assumption (not measured here); a GPU run of the planner measures its own."""

FRESH_BLOCK_BYTES = 32 * 2**20
"""glibc's largest mmap threshold (`DEFAULT_MMAP_THRESHOLD_MAX`, 64-bit): a freed block smaller than
this is reused from the heap, while a block this large or larger is mapped fresh from the system every
time, and the CPU faults in each of its pages on first touch (a GPU's caching allocator reuses)."""

GPU_HEADROOM = 0.9
"""Fraction of a device's memory a group may fill: the rest is the CUDA context and the allocator's
slack on a GPU, the system's own on a CPU. A margin, not a measurement."""


@dataclass(frozen=True)
class Coefficients:
    """Bytes and operator counts of the stacked step, per precision (see the module docstring)."""

    saved_layer: tuple[float, float, float, float]
    """Bytes autograd saves per token and layer: x H, x F, x heads, + constant."""
    saved_other: tuple[float, float]
    """Bytes saved per token outside the layers: x H, + constant."""
    cast_bytes: float
    """Bytes per layer-matrix parameter of autocast's weight copies."""
    traffic_layer: tuple[float, float]
    """Elementwise bytes moved per token and layer (forward and backward): x H, x F."""
    traffic_token: tuple[float, float]
    """Elementwise bytes moved per token outside the layers: x V (the loss), x H."""
    traffic_member: tuple[float, float]
    """Elementwise bytes moved per member and micro-batch: x V H (embedding and head gradients), x W."""
    ops: tuple[int, int]
    """Operators of one forward and backward pass: per layer, + constant."""


COEFFICIENTS = {
    "fp32": Coefficients(saved_layer=(40, 16, 2, 16), saved_other=(12, 26), cast_bytes=0,
                         traffic_layer=(528, 53), traffic_token=(34, 159), traffic_member=(39, 14), ops=(108, 63)),
    "bf16": Coefficients(saved_layer=(34, 8, 2, 16), saved_other=(12, 26), cast_bytes=2,
                         traffic_layer=(561, 42), traffic_token=(44, 197), traffic_member=(43, 25), ops=(147, 60)),
}
ADAMW_BYTES_PER_PARAM = 116
"""Bytes the per-member clipping and AdamW step move per parameter (counted like the rest)."""
ADAMW_OPS = (106, 48)
"""Operators of the clipping and AdamW step: per layer, + constant."""
CHUNK_BYTES = 8
"""Bytes per logit of the loss's working set: fp32 logits and their log-softmax (`stacked.HeadLoss`)."""
CHUNK_OPS = 12
"""Operators per chunk of the loss beyond the first."""


# ---- the model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Parameter counts of one member."""

    total: int
    layer_matrices: int
    """Parameters of the decoder layers' matrices (W): what autocast casts."""
    matmul: int
    """Parameters in matrix products: the layers' matrices and the head (PaLM's FLOP count)."""
    largest: int
    """Elements of the largest weight tensor."""
    tensors: int

    @classmethod
    def of(cls, shape: ModelShape, vocab: int) -> Sizes:
        """The counts of a Llama of `shape` and vocabulary `vocab` (untied head, no biases)."""
        h, f, layers = shape.hidden, shape.ffn, shape.layers
        kv = (shape.kv_heads or shape.heads) * (h // shape.heads)
        matrices = layers * (2 * h * h + 2 * h * kv + 3 * h * f)
        total = 2 * vocab * h + matrices + (2 * layers + 1) * h
        return cls(total, matrices, matrices + vocab * h, max(vocab * h, h * f, h * h), 9 * layers + 3)


def flops_per_token(shape: ModelShape, vocab: int, seq_len: int) -> float:
    """Training FLOPs per token, PaLM's count: `model.training_flops_per_token` from a shape."""
    return 6.0 * Sizes.of(shape, vocab).matmul + 12.0 * shape.layers * shape.hidden * seq_len


@dataclass(frozen=True)
class Workload:
    """One group of `group` members training in lockstep on one device, each on `micro` x
    `accumulation` sequences of `seq_len` tokens per optimizer step."""

    shape: ModelShape
    vocab: int
    seq_len: int
    micro: int
    accumulation: int
    group: int
    precision: str = "fp32"
    """'fp32', or 'bf16' (autocast on a GPU; weights and AdamW stay fp32)."""
    loss_chunk: int = LOSS_CHUNK["cpu"]

    @property
    def sizes(self) -> Sizes:
        return Sizes.of(self.shape, self.vocab)

    @property
    def tokens(self) -> int:
        """Tokens of one micro-batch of the whole group."""
        return self.group * self.micro * self.seq_len

    @property
    def loss_chunks(self) -> tuple[int, int, int]:
        """How `stacked.chunks` splits the loss: (pieces, logits in the largest piece, pieces a member's
        tokens are split into: 1 when whole members share a piece)."""
        per_member = self.micro * self.seq_len
        if per_member * self.vocab <= self.loss_chunk:
            members = min(self.loss_chunk // (per_member * self.vocab), self.group)
            return math.ceil(self.group / members), members * per_member * self.vocab, 1
        tokens = max(self.loss_chunk // self.vocab, 1)
        split = math.ceil(per_member / tokens)
        return self.group * split, min(tokens, per_member) * self.vocab, split

    # ---- memory ----

    def memory(self, device: Device | None = None) -> dict[str, float]:
        """The group's memory in bytes, by part, and `peak`. On a CPU `device` the process's own resident
        memory and the fresh member kept for stacking (12 P) share the memory and add to the peak."""
        c, sizes, k, h = COEFFICIENTS[self.precision], self.sizes, self.group, self.shape.hidden
        per_layer = c.saved_layer[0] * h + c.saved_layer[1] * self.shape.ffn + c.saved_layer[2] * self.shape.heads
        saved_per_token = self.shape.layers * (per_layer + c.saved_layer[3]) + c.saved_other[0] * h + c.saved_other[1]
        host = device is not None and not device.gpu
        parts = {
            "weights_and_moments": 12.0 * sizes.total * k,
            "gradients": 4.0 * sizes.total * k,
            "activations": saved_per_token * self.tokens + 4.0 * self.vocab * h * k,
            "autocast_copies": c.cast_bytes * sizes.layer_matrices * k,
            "loss_chunk": float(CHUNK_BYTES * self.loss_chunks[1]),
            "optimizer_scratch": 4.0 * sizes.largest * k,
            "process": device.process_bytes + 12.0 * sizes.total if host else 0.0,
        }
        accumulating = parts["gradients"] if self.accumulation > 1 else 0.0
        backward = (parts["weights_and_moments"] + accumulating + parts["activations"] + parts["autocast_copies"]
                    + parts["loss_chunk"])
        optimizer = parts["weights_and_moments"] + parts["gradients"] + parts["optimizer_scratch"]
        return {**parts, "peak": parts["process"] + max(backward, optimizer)}

    # ---- time ----

    def fresh_bytes(self) -> float:
        """Bytes of one optimizer step's allocations of `FRESH_BLOCK_BYTES` or more, which a CPU maps
        fresh: each weight tensor's gradient and AdamW's scratch tensor for it, and in each pass the
        loss's fp32 logits and log-softmax of every piece. (Smaller blocks come back from the heap.)"""
        k, h, shape = self.group, self.shape.hidden, self.shape
        kv = (shape.kv_heads or shape.heads) * (h // shape.heads)
        tensors = [self.vocab * h] * 2 + [h * h, kv * h, kv * h, h * h, h * shape.ffn, h * shape.ffn,
                                          h * shape.ffn] * shape.layers
        weights = sum(2 * 4.0 * k * n for n in tensors if 4 * k * n >= FRESH_BLOCK_BYTES)
        pieces, logits, _ = self.loss_chunks
        loss = pieces * 2 * 4.0 * logits if 4 * logits >= FRESH_BLOCK_BYTES else 0.0
        return weights + self.accumulation * loss

    def step_flops(self) -> float:
        """Model FLOPs of one optimizer step of the whole group."""
        return self.accumulation * self.tokens * flops_per_token(self.shape, self.vocab, self.seq_len)

    def step_traffic(self) -> tuple[float, float]:
        """(elementwise bytes, operators) of one optimizer step of the whole group."""
        c, sizes, k, h = COEFFICIENTS[self.precision], self.sizes, self.group, self.shape.hidden
        layers, vocab = self.shape.layers, self.vocab
        pieces, _, split = self.loss_chunks
        per_token = layers * (c.traffic_layer[0] * h + c.traffic_layer[1] * self.shape.ffn)
        per_token += c.traffic_token[0] * vocab + c.traffic_token[1] * h
        per_member = c.traffic_member[0] * vocab * h + c.traffic_member[1] * sizes.layer_matrices
        per_member += 12.0 * vocab * h * (split - 1)  # the head's gradient, added to once per piece
        micro_batch = per_token * self.tokens + per_member * k
        accumulate = 12.0 * sizes.total * k * (self.accumulation - 1)
        adamw = ADAMW_BYTES_PER_PARAM * sizes.total * k
        ops = (self.accumulation * (c.ops[0] * layers + c.ops[1] + CHUNK_OPS * (pieces - 1))
               + ADAMW_OPS[0] * layers + ADAMW_OPS[1])
        return self.accumulation * micro_batch + accumulate + adamw, float(ops)

    def step_seconds(self, device: Device, matmul_seconds: float | None = None) -> dict[str, float]:
        """Predicted seconds of one optimizer step on `device`, by term, and `total`: their sum on a CPU,
        which does one thing at a time; on a GPU, kernels run while Python issues the next ones, so
        the larger of the device's work and the issuing. The matrix products take `matmul_seconds`
        where they were timed at their own shapes (`measure_matmul_seconds`, on a CPU), else the
        model FLOPs at the device's peak (a GPU, whose peak is stated or measured)."""
        traffic, ops = self.step_traffic()
        matmul = matmul_seconds if matmul_seconds is not None else self.step_flops() / device.peak_flops_per_s
        parts = {"matmul": matmul, "memory": traffic / device.bandwidth_bytes_per_s,
                 "page_faults": self.fresh_bytes() * device.fresh_page_seconds, "overhead": ops * device.op_seconds}
        work = parts["matmul"] + parts["memory"] + parts["page_faults"]
        return {**parts, "total": max(work, parts["overhead"]) if device.gpu else work + parts["overhead"]}

    def mfu(self, device: Device, matmul_seconds: float | None = None) -> float:
        """Model FLOPs utilisation the step time predicts."""
        return self.step_flops() / self.step_seconds(device, matmul_seconds)["total"] / device.peak_flops_per_s


# ---- the device -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    """What the planner needs to know of one device (GPU, or a whole CPU)."""

    name: str
    peak_flops_per_s: float
    bandwidth_bytes_per_s: float
    op_seconds: float
    memory_bytes: float
    usable_fraction: float = 1.0
    """Fraction of `memory_bytes` a group may fill."""
    process_bytes: float = 0.0
    """A training process's own resident memory before its group is built (a CPU's RSS; 0 on a GPU)."""
    gpu: bool = True
    """A GPU (the group computes in the config's precision), or the CPU (fp32)."""
    fresh_page_seconds: float = 0.0
    """Seconds per byte of faulting in freshly mapped memory (a CPU's; 0 on a GPU, whose allocator reuses)."""
    measured: tuple[str, ...] = field(default_factory=tuple)
    """Which numbers were measured on this machine (the others were stated)."""

    @property
    def usable_bytes(self) -> float:
        return self.memory_bytes * self.usable_fraction


def this_machine(precision: str) -> Device:
    """This machine's training device, every number measured: its GPU (in `precision`), else its CPU (fp32)."""
    import torch

    from regmix_ds.train.utilization import (
        PRECISIONS,
        measure_bandwidth,
        measure_fresh_page_seconds,
        measure_matmul_peak,
    )

    measured = ("peak", "bandwidth", "op cost", "memory")
    if torch.cuda.is_available():
        device, dtype = torch.device("cuda"), PRECISIONS[precision]
        return Device(torch.cuda.get_device_name(), measure_matmul_peak(device, dtype, repeats=10),
                      measure_bandwidth(device), measure_op_seconds(device, dtype),
                      float(torch.cuda.get_device_properties(device).total_memory), GPU_HEADROOM,
                      measured=measured)
    import transformers.models.llama.modeling_llama  # noqa: F401  (a trainer has it loaded too)

    process = resident_bytes()  # what a training process holds before its group: before the probes' operands
    ram = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    return Device(f"CPU ({torch.get_num_threads()} threads)", measure_matmul_peak("cpu"), measure_step_bandwidth(),
                  measure_op_seconds(torch.device("cpu")), ram, GPU_HEADROOM, process, False,
                  measure_fresh_page_seconds(), (*measured, "page faults", "process"))


def probe_group(workload: Workload, device, dtype=None) -> tuple:
    """A group of fresh members of `workload` on `device`, ready to step: (model, AdamW, state, a batch
    of random tokens, learning rates), as `group.stacked_step` takes them."""
    import torch

    from regmix_ds.train import model as models
    from regmix_ds.train.group import AdamW, GroupState, fresh_start
    from regmix_ds.train.stacked import StackedLlama

    config = models.llama_config(workload.shape, workload.vocab, workload.seq_len)
    state = GroupState.stack([fresh_start(config, 0)] * workload.group, device)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(0, workload.vocab, (workload.accumulation, workload.group, workload.micro,
                                              workload.seq_len + 1), generator=generator).to(device)
    lrs = torch.full((workload.group,), 1e-3, dtype=torch.float64, device=device)
    return StackedLlama.from_config(config), AdamW((0.9, 0.95), 1e-8, 0.1, 1.0), state, batch, lrs


def measure_op_seconds(device, dtype=None, steps: int = 20) -> float:
    """The cost of one operator of the training step on `device`, beyond its arithmetic: the median time
    of a whole group step (`group.stacked_step`) of a model so small that its arithmetic is nothing,
    over the step's operator count. It holds what every operator pays: dispatch, autograd, a kernel
    launch on a GPU, and the step's own Python."""
    import statistics
    import time

    import torch

    from regmix_ds.train.group import stacked_step
    from regmix_ds.train.utilization import synchronize

    dtype = dtype or torch.float32
    probe = Workload(ModelShape(layers=2, heads=2, hidden=16, ffn=32), vocab=64, seq_len=8, micro=1, accumulation=1,
                     group=1, precision="bf16" if dtype == torch.bfloat16 else "fp32")
    model, adamw, state, batch, lrs = probe_group(probe, device)
    seconds = []
    for step in range(1, steps + 4):
        synchronize(device)
        start = time.perf_counter()
        stacked_step(model, adamw, state, batch, lrs, step, dtype)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[3:]) / probe.step_traffic()[1]


BANDWIDTH_PROBE = Workload(ModelShape(layers=2, heads=8, hidden=256, ffn=512), vocab=4096, seq_len=256, micro=1,
                           accumulation=1, group=4)
"""The group whose step measures a CPU's bandwidth: proxy-1m's shape, about 0.15 s a step on 2 cores."""


def measure_step_bandwidth(steps: int = 3) -> float:
    """The CPU's bandwidth as the training step's elementwise operators see it: the bytes they move
    (counted as `step_traffic` counts them) over the time they take, timed operator by operator in
    real steps of `BANDWIDTH_PROBE`'s group; the best of `steps` after one warm-up.

    Not `a + b` on long vectors (`utilization.measure_bandwidth`): on a CPU that probe measures the
    page faults of fresh memory, and glibc maps fresh pages only for blocks of 32 MiB or more; the
    step's operators mostly reuse freed heap (in-place AdamW, activations under 32 MiB), so the
    probe read 10-22 GB/s from run to run where the step's own operators moved 21-28 GB/s."""
    import torch

    from regmix_ds.train.group import stacked_step
    from regmix_ds.train.utilization import ElementwiseTimer

    model, adamw, state, batch, lrs = probe_group(BANDWIDTH_PROBE, torch.device("cpu"))
    best = 0.0
    for step in range(1, steps + 2):
        timer = ElementwiseTimer()
        with timer:
            stacked_step(model, adamw, state, batch, lrs, step)
        best = max(best, timer.bytes / timer.seconds) if step > 1 else best
    return best


def measure_matmul_seconds(workload: Workload) -> float:
    """Seconds of the matrix products of one optimizer step of `workload` on this CPU (fp32), each timed
    at its own shapes: one forward and backward pass traced on fake tensors (`FakeTensorMode`: shapes,
    no memory, no arithmetic), then every distinct product run on random operands of its layout
    (`utilization.replay_seconds`), times its count and the micro-batches.

    Not the model FLOPs at the peak of one large square product: the group's batched products of small
    hidden sizes, their transposed layouts in the backward pass and flash attention run slower per
    FLOP (measured on 2 cores: 130-290 GFLOP/s per product against a 308 GFLOP/s peak)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from regmix_ds.train.utilization import MatmulRecorder, replay_seconds

    recorder = MatmulRecorder()
    with FakeTensorMode():
        one_pass = dataclasses.replace(workload, accumulation=1)
        model, _, state, batch, _ = probe_group(one_pass, torch.device("cpu"))
        with recorder:
            model.member_losses(state.params, batch[0]).sum().backward()
    return workload.accumulation * replay_seconds(recorder.calls, torch.device("cpu"))


def stated_gpu(name: str, peak_tflops: float, memory_gib: float, bandwidth_tbs: float | None) -> Device:
    """A GPU described by its numbers (no bandwidth: the time then needs a stated MFU)."""
    bandwidth = bandwidth_tbs * 1e12 if bandwidth_tbs is not None else math.nan
    return Device(name, peak_tflops * 1e12, bandwidth, GPU_OP_SECONDS, memory_gib * 2**30, GPU_HEADROOM)


def resident_bytes() -> float:
    """This process's peak resident memory so far: `VmHWM` of /proc/self/status on Linux.

    Not `ru_maxrss` there: Linux carries a parent's peak into a child across fork and exec, so a
    small process started by a large one reports the large one's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0  # KiB on Linux, bytes on macOS: rare here


def largest_group(workload: Workload, device: Device, limit: int = 4096) -> int:
    """The most members (up to `limit`) whose group's predicted peak fits the device's usable memory
    (0: not even one). The peak grows with the group, so the answer is found by bisection."""
    def fits(k: int) -> bool:
        return dataclasses.replace(workload, group=k).memory(device)["peak"] <= device.usable_bytes

    low, high = 0, limit
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def advised_swarm(domains: int) -> int:
    """Proxies to train for `domains` domains: RegMix's 512 for 17, scaled linearly (Olmix)."""
    return math.ceil(REGMIX_RUNS * domains / REGMIX_DOMAINS)


# ---- a whole swarm ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SwarmPlan:
    """Everything `regmix-ds plan` reports (bytes, seconds and FLOPs as plain numbers)."""

    domains: int
    swarm: int
    """Proxies to train: the swarm on disk, else `swarm.n`."""
    advised_swarm: int
    workload: Workload
    """One group at the advised group size."""
    proxy_tokens: int
    proxy_steps: int
    proxy_flops: float
    """Training FLOPs of one proxy."""
    largest_group: int
    group_size: int
    """The advised group: the largest that fits, but no more than the swarm's share of one device."""
    memory: dict[str, float]
    step: dict[str, float]
    mfu: float
    mfu_stated: bool
    groups: int
    group_seconds: float
    wall_seconds: float
    device_hours: float
    target: dict[str, float | str]


def proxy_workload(experiment: ExperimentConfig, settings: PlanConfig, device: Device) -> tuple[Workload, int, int]:
    """A group of one proxy as the experiment trains it on `device`: (workload, tokens, steps of one proxy)."""
    proxy = experiment.require_proxy()
    deepspeed = load_ds_config(proxy.deepspeed_config)
    precision = deepspeed.precision if device.gpu else "fp32"  # a group on a CPU trains in fp32
    if precision == "fp16":
        raise RegmixError(deepspeed.path, "a proxy group trains in fp32 or bf16, not fp16")
    batch = deepspeed.batch_sizes(world_size=1)
    steps = proxy.steps or math.ceil(proxy.train_tokens / (batch.global_batch * proxy.seq_len))
    workload = Workload(load_shape(proxy.preset, proxy.model_config), vocabulary(experiment, settings), proxy.seq_len,
                        batch.micro, batch.accumulation, 1, precision, LOSS_CHUNK["cuda" if device.gpu else "cpu"])
    return workload, steps * batch.global_batch * proxy.seq_len, steps


def vocabulary(experiment: ExperimentConfig, settings: PlanConfig) -> int:
    """The vocabulary to plan with: stated, else the prepared manifest's, else the tokenizer `prepare` would train."""
    if settings.vocab_size is not None:
        return settings.vocab_size
    manifest = experiment.work.manifest
    return Manifest.load(manifest).vocab_size if manifest.is_file() else experiment.data.vocab_size


def swarm_size(experiment: ExperimentConfig) -> int:
    """Proxies the experiment trains: those of its swarm directory, else `swarm.n`."""
    swarm = experiment.work.swarm
    found = swarm.indices() if swarm.path.is_dir() else []
    return len(found) or experiment.swarm.n


def plan_swarm(experiment: ExperimentConfig, settings: PlanConfig, device: Device) -> SwarmPlan:
    """The swarm's cost on `settings.gpus` devices like `device`, and its target run's."""
    one, tokens, steps = proxy_workload(experiment, settings, device)
    domains, swarm = len(experiment.data.domains), swarm_size(experiment)
    largest = largest_group(one, device)
    if largest == 0:
        raise RegmixError(experiment.path, f"not even one proxy fits {device.name}'s "
                                           f"{device.usable_bytes / 2**30:.1f} GiB (predicted "
                                           f"{one.memory(device)['peak'] / 2**30:.1f} GiB)")
    size = min(largest, math.ceil(swarm / settings.gpus))
    workload = dataclasses.replace(one, group=size)
    matmul_seconds = None if device.gpu else measure_matmul_seconds(workload)
    step = workload.step_seconds(device, matmul_seconds) if math.isfinite(device.bandwidth_bytes_per_s) else {}
    mfu = settings.mfu if settings.mfu is not None else workload.mfu(device, matmul_seconds)
    step_total = workload.step_flops() / (device.peak_flops_per_s * mfu)
    groups = math.ceil(swarm / size)
    target = target_cost(experiment, settings, device, one.vocab, one.seq_len)
    return SwarmPlan(
        domains=domains, swarm=swarm, advised_swarm=advised_swarm(domains), workload=workload, proxy_tokens=tokens,
        proxy_steps=steps, proxy_flops=tokens * flops_per_token(one.shape, one.vocab, one.seq_len),
        largest_group=largest, group_size=size, memory=workload.memory(device), step={**step, "planned": step_total},
        mfu=mfu, mfu_stated=settings.mfu is not None, groups=groups, group_seconds=steps * step_total,
        wall_seconds=math.ceil(groups / settings.gpus) * steps * step_total,
        device_hours=groups * steps * step_total / 3600, target=target,
    )


def target_cost(experiment: ExperimentConfig, settings: PlanConfig, device: Device, vocab: int,
                seq_len: int) -> dict[str, float | str]:
    """The target run's parameters, FLOPs, and time on all `gpus` devices at the stated `target_mfu`."""
    shape = load_shape(settings.target_preset, None)
    flops = settings.target_tokens * flops_per_token(shape, vocab, seq_len)
    seconds = flops / (settings.gpus * device.peak_flops_per_s * settings.target_mfu)
    return {"preset": settings.target_preset, "params": Sizes.of(shape, vocab).total, "tokens": settings.target_tokens,
            "flops": flops, "mfu": settings.target_mfu, "wall_seconds": seconds,
            "device_hours": seconds * settings.gpus / 3600}

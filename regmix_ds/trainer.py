"""The training loop shared by the proxies and the target run (entry point: `train.py`).

One run = (manifest, mixture, model shape, DeepSpeed config, token budget, seed). It writes

    OUT/run.json          the resolved settings, written when training starts
    OUT/metrics.jsonl     one line per step (step, loss, lr, grad_norm, tokens, tokens_per_s),
                          and a line with per-domain `valid_loss` at every evaluation
    OUT/checkpoints/      DeepSpeed checkpoints (step########/, each with complete.json)
    OUT/hf/               the final model + tokenizer as a Hugging Face directory
    OUT/result.json       written last, atomically, by rank 0: what the proxy runner collects

Exit codes: 0 done (or already done), 2 bad input (one-line error), 75 stopped by SIGTERM or
SIGUSR1 after saving a checkpoint (EX_TEMPFAIL: requeue me; `--resume auto` continues).

Determinism: the model is initialised from `--seed` (see `model.build_model`), the data order
is a function of (mixture, seed) and the sample counter, the learning rate a function of the
step, and nothing else draws random numbers (no dropout), so a resumed run repeats the
uninterrupted one step for step.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from regmix_ds import engine, model as models
from regmix_ds.blend import BlendedDataset, BlendedSampler, fixed_samples
from regmix_ds.cli import OneLineErrorParser
from regmix_ds.dsconfig import BatchSizes, DeepSpeedSettings, choose_mixture, load_ds_config
from regmix_ds.errors import RegmixError
from regmix_ds.files import write_json_atomic, write_text_atomic
from regmix_ds.indexed import IndexedDataset
from regmix_ds.manifest import Manifest
from regmix_ds.mixture import Mixture
from regmix_ds.utilization import PRECISIONS, Utilization, measure_matmul_peak

EXIT_REQUEUE = 75
"""EX_TEMPFAIL from sysexits.h: the run saved a checkpoint on a signal and wants to be requeued."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class TrainConfig:
    """One training run, as given on the command line (every field is a `train.py` flag)."""

    manifest: str
    """manifest.json of the prepared corpus."""
    deepspeed_config: str
    """DeepSpeed JSON config (may carry the mixture in a "regmix" block)."""
    out: str
    """Run directory."""
    mixture: str | None = None
    """Mixture JSON; optional when the DeepSpeed config has a "regmix" block."""
    preset: str | None = None
    """Model preset name (see `model.PRESETS`)."""
    model_config: str | None = None
    """JSON/YAML of `model.ModelShape` fields, instead of a preset."""
    seq_len: int = 2048
    """Tokens per training sequence."""
    train_tokens: int | None = None
    """Training budget in tokens; the step count is rounded up to whole global batches."""
    steps: int | None = None
    """Training budget in optimizer steps (instead of --train-tokens)."""
    lr: float | None = None
    """Peak learning rate; None keeps the DeepSpeed config's optimizer lr."""
    schedule: str = "constant"
    """'constant' after warmup (RegMix proxies) or 'cosine' down to lr_floor x peak (target)."""
    warmup: int = 0
    """Linear warmup steps."""
    lr_floor: float = 0.1
    """Final learning rate of the cosine schedule, as a fraction of the peak."""
    seed: int = 0
    """Seeds model initialisation and the data order."""
    eval_interval: int = 0
    """Evaluate every N steps (0: only at the end)."""
    eval_batches: int = 4
    """Validation micro-batches per domain: the first eval_batches x micro-batch samples of each valid set."""
    save_interval: int = 0
    """Checkpoint every N steps (0: only when stopped by a signal)."""
    keep_checkpoints: int = 1
    """Complete checkpoints kept; older ones are deleted after each save."""
    resume: str | None = None
    """'auto': continue from the newest complete checkpoint in OUT (or start if none)."""
    max_epochs: float | None = None
    """Repetition cap per domain (None: the blended dataset's default)."""
    log_interval: int = 1
    """Print a progress line every N steps."""

    def __post_init__(self) -> None:
        if (self.preset is None) == (self.model_config is None):
            raise RegmixError("--preset", "give exactly one of --preset and --model-config")
        if (self.train_tokens is None) == (self.steps is None):
            raise RegmixError("--train-tokens", "give exactly one of --train-tokens and --steps")
        positive = {"--seq-len": self.seq_len, "--eval-batches": self.eval_batches,
                    "--keep-checkpoints": self.keep_checkpoints, "--log-interval": self.log_interval,
                    "--train-tokens": self.train_tokens, "--steps": self.steps}
        for flag, value in positive.items():
            if value is not None and value < 1:
                raise RegmixError(flag, f"must be >= 1, got {value}")
        for flag, value in {"--warmup": self.warmup, "--eval-interval": self.eval_interval,
                            "--save-interval": self.save_interval}.items():
            if value < 0:
                raise RegmixError(flag, f"must be >= 0, got {value}")
        if self.schedule not in SCHEDULES:
            raise RegmixError("--schedule", f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise RegmixError("--lr", f"must be a positive number, got {self.lr}")
        if not 0.0 <= self.lr_floor <= 1.0:
            raise RegmixError("--lr-floor", f"must be within [0, 1], got {self.lr_floor}")
        if self.resume not in (None, "auto"):
            raise RegmixError("--resume", f"only 'auto' is supported, got {self.resume!r}")
        if self.max_epochs is not None and not self.max_epochs > 0:
            raise RegmixError("--max-epochs", f"must be > 0, got {self.max_epochs}")


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before any process group exists: all bad input fails here, on every rank."""

    config: TrainConfig
    manifest: Manifest
    mixture: Mixture
    deepspeed: DeepSpeedSettings
    batch: BatchSizes
    steps: int
    shape: models.ModelShape
    peak_lr: float

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    @property
    def tokens_per_step(self) -> int:
        return self.batch.global_batch * self.config.seq_len

    def signature(self) -> dict:
        """What a checkpoint must agree on to be resumed by this run."""
        c = self.config
        return {
            "mixture_hash": self.mixture.content_hash(), "seed": c.seed, "seq_len": c.seq_len,
            "micro_batch": self.batch.micro, "accumulation": self.batch.accumulation, "world_size": self.batch.world,
            "steps": self.steps, "schedule": c.schedule, "warmup": c.warmup, "lr": self.peak_lr,
            "lr_floor": c.lr_floor, "model": dataclasses.asdict(self.shape), "vocab_size": self.manifest.vocab_size,
        }


def plan_run(config: TrainConfig, world_size: int) -> RunPlan:
    """Read and cross-check every input; writes nothing."""
    manifest = Manifest.load(config.manifest)
    deepspeed = load_ds_config(config.deepspeed_config)
    flag_mixture = Mixture.load(config.mixture) if config.mixture is not None else None
    mixture = choose_mixture(flag_mixture, deepspeed)
    mixture.check_domains(manifest.domains, config.mixture or config.deepspeed_config)
    batch = deepspeed.batch_sizes(world_size)
    steps = config.steps or math.ceil(config.train_tokens / (batch.global_batch * config.seq_len))
    if config.warmup > steps:
        raise RegmixError("--warmup", f"{config.warmup} steps is longer than the run ({steps} steps)")
    shape = models.load_shape(config.preset, config.model_config)
    peak_lr = config.lr if config.lr is not None else deepspeed.learning_rate
    return RunPlan(config, manifest, mixture, deepspeed, batch, steps, shape, peak_lr)


def learning_rate(step: int, plan: RunPlan) -> float:
    """The rate for optimizer step `step` (0-based): linear warmup, then constant or cosine."""
    c, peak = plan.config, plan.peak_lr
    if step < c.warmup:
        return peak * (step + 1) / c.warmup
    if c.schedule == "constant":
        return peak
    progress = (step - c.warmup) / max(plan.steps - c.warmup, 1)
    floor = peak * c.lr_floor
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---- output directory --------------------------------------------------------------------


def decide_start(plan: RunPlan) -> str:
    """'done', 'resume' or 'fresh', from what OUT already holds; refuse to clobber a run."""
    out, auto = plan.out, plan.config.resume == "auto"
    if (out / "result.json").is_file():
        if auto:
            return "done"
        raise RegmixError("--out", f"{out} already holds a finished run (result.json); choose another directory")
    if engine.newest_checkpoint(out / "checkpoints") is not None:
        if auto:
            return "resume"
        raise RegmixError("--out", f"{out} holds checkpoints of an earlier run; pass --resume auto to continue it")
    return "fresh"


class Reporter:
    """Rank-0 output: progress lines on stdout and `metrics.jsonl`; every other rank stays silent."""

    def __init__(self, out: Path, is_main: bool):
        self.is_main = is_main
        self.metrics_path = out / "metrics.jsonl"

    def say(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)

    def record(self, entry: Mapping[str, Any]) -> None:
        if self.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")

    def restart_at(self, step: int) -> None:
        """Keep metrics up to `step`: lines a killed run wrote after its last checkpoint go."""
        if not self.is_main:
            return
        lines = self.metrics_path.read_text().splitlines() if self.metrics_path.exists() else []
        kept = [line for line in lines if (entry := parse_metrics_line(line)) is not None and entry["step"] <= step]
        write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))


def parse_metrics_line(line: str) -> dict | None:
    """A metrics.jsonl entry, or None for the torn last line a machine crash mid-append leaves."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


# ---- data -----------------------------------------------------------------------------------


def training_data(plan: RunPlan, rank: int) -> tuple[BlendedDataset, BlendedSampler]:
    """The blended training stream, long enough for every step (repetition cap checked now)."""
    streams = {name: IndexedDataset(split.prefix).tokens for name, split in plan.manifest.train.items()}
    shards = {name: f"{split.prefix}.bin" for name, split in plan.manifest.train.items()}
    extra = {} if plan.config.max_epochs is None else {"max_epochs": plan.config.max_epochs}
    dataset = BlendedDataset(
        streams, plan.mixture, plan.config.seq_len, plan.config.seed, plan.steps * plan.batch.global_batch,
        where="--train-tokens", vocab_size=plan.manifest.vocab_size, sources=shards, **extra,
    )
    return dataset, BlendedSampler(dataset, plan.batch.micro, plan.batch.world, rank)


def batch_loader(dataset: BlendedDataset, sampler: BlendedSampler, micro: int) -> Iterator[torch.Tensor]:
    """The sampler's micro-batches of packed samples [micro, seq_len + 1], in order."""
    return iter(torch.utils.data.DataLoader(dataset, batch_size=micro, sampler=sampler))


def validation_sets(plan: RunPlan) -> dict[str, torch.Tensor]:
    """The first eval_batches x micro samples (fewer if short) of every domain's and target's validation stream."""
    count, seq_len = plan.config.eval_batches * plan.batch.micro, plan.config.seq_len
    return {
        name: fixed_samples(IndexedDataset(split.prefix).tokens, seq_len, count, f"{split.prefix}.bin",
                            plan.manifest.vocab_size)
        for name, split in plan.manifest.valid.items()
    }


def rank_share(samples: torch.Tensor, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank `rank`'s samples and their weights, padded so every rank runs as many forwards.

    ZeRO-3 gathers parameters inside each forward, so all ranks must take part in every one;
    a rank short of samples repeats its first one with weight 0.
    """
    mine = samples[rank::world]
    size = math.ceil(len(samples) / world)
    weights = torch.zeros(size, dtype=torch.float64)
    weights[: len(mine)] = 1.0
    filler = samples[:1].expand(size - len(mine), -1)
    return torch.cat([mine, filler]), weights


def micro_batches(loader: Iterator[torch.Tensor], count: int) -> list[torch.Tensor]:
    return [next(loader) for _ in range(count)]


# ---- one step, one evaluation ------------------------------------------------------------------


def forward_loss(ds_engine: Any, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    inputs, targets = models.split_inputs(batch.to(ds_engine.device))
    logits = ds_engine(input_ids=inputs, use_cache=False).logits
    return models.next_token_loss(logits, targets, reduction)


def train_step(ds_engine: Any, batches: list[torch.Tensor], lr: float) -> tuple[float, float | None]:
    """One optimizer step over this rank's micro-batches: (mean local loss, global grad norm)."""
    engine.set_learning_rate(ds_engine, lr)
    losses, measured = [], None
    for index, batch in enumerate(batches):
        loss = forward_loss(ds_engine, batch)
        ds_engine.backward(loss)
        if index == len(batches) - 1:
            measured = engine.gradient_norm_before_step(ds_engine)
        ds_engine.step()
        losses.append(loss.item())
    return sum(losses) / len(losses), engine.reported_gradient_norm(ds_engine, measured)


@torch.no_grad()
def evaluate(ds_engine: Any, sets: Mapping[str, torch.Tensor], micro: int, rank: int, world: int) -> dict[str, float]:
    """Mean next-token loss on each fixed validation set, over all ranks."""
    ds_engine.eval()
    sums = [weighted_loss_sum(ds_engine, *rank_share(samples, rank, world), micro) for samples in sets.values()]
    ds_engine.train()
    totals = engine.all_reduce_sum(sums)
    return {name: total / sets[name][:, 1:].numel() for name, total in zip(sets, totals)}


def weighted_loss_sum(ds_engine: Any, samples: torch.Tensor, weights: torch.Tensor, micro: int) -> float:
    """Sum of the token losses of `samples`, each sample's scaled by its weight (1, or 0 for padding)."""
    total = 0.0
    for start in range(0, len(samples), micro):
        batch = samples[start : start + micro]
        per_token = forward_loss(ds_engine, batch, reduction="none").double().view(len(batch), -1)
        total += float(per_token.sum(dim=1) @ weights[start : start + micro])
    return total


# ---- signals -------------------------------------------------------------------------------------


class StopRequest:
    """Set by SIGTERM/SIGUSR1; acted on at the next step boundary once all ranks agree."""

    def __init__(self) -> None:
        self.received: int | None = None
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.received = signum

    @property
    def flag(self) -> float:
        return 0.0 if self.received is None else 1.0


# ---- the run -------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What a checkpoint carries besides the DeepSpeed state (the client state)."""

    step: int = 0
    train_seconds: float = 0.0
    """Time in training steps, over every segment of a resumed run (tokens_per_s divides by it)."""
    wall_seconds: float = 0.0
    """Time from the first step to the end, over every segment (not counting start-up or requeue waits)."""

    def client_state(self, sampler: BlendedSampler, plan: RunPlan) -> dict:
        return {**dataclasses.asdict(self), "sampler": sampler.state_dict(), "signature": plan.signature()}


@dataclass
class Session:
    """The live pieces of one run on this rank."""

    plan: RunPlan
    dist: engine.DistEnv
    ds_engine: Any
    sampler: BlendedSampler
    valid_sets: dict[str, torch.Tensor]
    reporter: Reporter
    stop: StopRequest
    progress: Progress
    utilization: Utilization
    segment_start: float = 0.0

    def evaluate(self) -> dict[str, float]:
        losses = evaluate(self.ds_engine, self.valid_sets, self.plan.batch.micro, self.dist.rank, self.dist.world_size)
        self.reporter.record({"step": self.progress.step, "valid_loss": losses})
        self.reporter.say("valid " + " ".join(f"{name} {loss:.4f}" for name, loss in losses.items()))
        return losses

    def save(self) -> None:
        path = engine.save_checkpoint(
            self.ds_engine, self.plan.out / "checkpoints", self.progress.step,
            self.progress.client_state(self.sampler, self.plan), self.dist.is_main, self.plan.config.keep_checkpoints,
        )
        self.reporter.say(f"checkpoint {path}")

    def clock(self) -> None:
        self.progress.wall_seconds = time.monotonic() - self.segment_start


def resume_progress(client_state: Mapping[str, Any], plan: RunPlan, sampler: BlendedSampler, where: Path) -> Progress:
    """Check a checkpoint belongs to this run, then restore the sampler and the counters."""
    saved = client_state.get("signature", {})
    differing = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in plan.signature().items() if saved.get(k) != v]
    if differing:
        raise RegmixError(where, f"checkpoint is from a different run ({'; '.join(differing)}); use another --out")
    sampler.load_state_dict(client_state["sampler"])
    return Progress(client_state["step"], client_state["train_seconds"], client_state["wall_seconds"])


def train(config: TrainConfig, dist_env: engine.DistEnv) -> int:
    """Run (or resume, or skip when finished) one training run; returns the process exit code.

    Everything that can reject the input runs before the process group starts, identically
    on every rank, so a bad flag ends every rank with exit 2 instead of leaving one waiting.
    """
    plan = plan_run(config, dist_env.world_size)
    start = decide_start(plan)
    reporter = Reporter(plan.out, dist_env.is_main)
    if start == "done":
        reporter.say(f"{plan.out / 'result.json'} exists: run already finished")
        return 0
    dataset, sampler = training_data(plan, dist_env.rank)
    valid_sets = validation_sets(plan)
    hf_config = models.llama_config(
        plan.shape, plan.manifest.vocab_size, config.seq_len, plan.manifest.tokenizer.get("eos_token_id")
    )
    model = models.build_model(hf_config, config.seed)
    params = models.parameter_counts(model.named_parameters())
    stop = StopRequest()
    utilization = measure_utilization(plan, hf_config, dist_env.world_size)

    engine.init_distributed(dist_env)
    settings = plan.deepspeed.for_world(dist_env.world_size, plan.peak_lr)
    ds_engine = engine.initialize(model, models.weight_decay_groups(model, plan.deepspeed.weight_decay), settings)
    if dist_env.is_main:
        plan.out.mkdir(parents=True, exist_ok=True)
    progress = Progress()
    if start == "resume":
        directory = engine.newest_checkpoint(plan.out / "checkpoints")
        progress = resume_progress(engine.load_checkpoint(ds_engine, directory), plan, sampler, directory)
        reporter.say(f"resumed from {directory} at step {progress.step}")
    reporter.restart_at(progress.step)
    if dist_env.is_main:
        write_json_atomic(plan.out / "run.json", run_record(plan, dist_env, settings, params))
    reporter.say(
        f"{config.preset or config.model_config}: {params['total']:,} parameters "
        f"({params['non_embedding']:,} without embeddings); {plan.steps} steps of {plan.tokens_per_step:,} tokens; "
        f"ZeRO {plan.deepspeed.zero_stage}, {dist_env.world_size} rank(s) via {dist_env.launcher}"
    )
    session = Session(plan, dist_env, ds_engine, sampler, valid_sets, reporter, stop, progress, utilization)
    if not run_steps(session, dataset):
        return EXIT_REQUEUE
    finish(session, hf_config, params)
    reporter.say(f"done: {plan.out / 'result.json'}")
    return 0


def measure_utilization(plan: RunPlan, hf_config: Any, world_size: int) -> Utilization:
    """Model FLOPs per token, and the matmul peak of this rank's device times the ranks.

    Every rank probes at the same moment, so ranks sharing a machine's cores see the same
    contention they will see in training.
    """
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    peak = measure_matmul_peak(device, PRECISIONS[plan.deepspeed.precision])
    return Utilization(models.training_flops_per_token(hf_config, plan.config.seq_len), peak * world_size)


def run_steps(session: Session, dataset: BlendedDataset) -> bool:
    """Train up to the last step; False if a stop signal ended it early (after a checkpoint)."""
    plan, progress = session.plan, session.progress
    loader = batch_loader(dataset, session.sampler, plan.batch.micro)
    session.segment_start = time.monotonic() - progress.wall_seconds
    while progress.step < plan.steps:
        tick = time.monotonic()
        lr = learning_rate(progress.step, plan)
        local_loss, grad_norm = train_step(session.ds_engine, micro_batches(loader, plan.batch.accumulation), lr)
        loss_sum, stop_votes = engine.all_reduce_sum([local_loss, session.stop.flag])
        session.sampler.advance(plan.batch.global_batch)
        progress.step += 1
        seconds = time.monotonic() - tick
        progress.train_seconds += seconds
        session.clock()
        entry = step_entry(plan, progress, loss_sum / session.dist.world_size, lr, grad_norm, seconds, session.utilization)
        session.reporter.record(entry)
        if every(plan.config.log_interval, progress.step) or progress.step == plan.steps:
            session.reporter.say(step_line(entry, plan))
        if every(plan.config.eval_interval, progress.step) and progress.step < plan.steps:
            session.evaluate()
        if stop_votes > 0 or every(plan.config.save_interval, progress.step):
            session.save()
        if stop_votes > 0:
            session.reporter.say(f"stopped by a signal at step {progress.step}: exit {EXIT_REQUEUE}, resume with --resume auto")
            return False
    return True


def every(interval: int, step: int) -> bool:
    """Whether a periodic action (0: never) falls on `step`."""
    return interval > 0 and step % interval == 0


def step_entry(plan: RunPlan, progress: Progress, loss: float, lr: float, grad_norm: float | None,
               seconds: float, utilization: Utilization) -> dict:
    """The metrics.jsonl line of the step just taken (`seconds` long)."""
    tokens_per_s = plan.tokens_per_step / seconds
    return {
        "step": progress.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
        "tokens": progress.step * plan.tokens_per_step, "tokens_per_s": tokens_per_s,
        "mfu": utilization.mfu(tokens_per_s),
    }


def step_line(entry: Mapping[str, Any], plan: RunPlan) -> str:
    grad = "-" if entry["grad_norm"] is None else f"{entry['grad_norm']:.3f}"
    return (
        f"step {entry['step']}/{plan.steps} | loss {entry['loss']:.4f} | lr {entry['lr']:.2e} | grad {grad} | "
        f"{entry['tokens_per_s']:,.0f} tok/s | MFU {entry['mfu']:.1%} | {entry['tokens']:,} tokens"
    )


def finish(session: Session, hf_config: Any, params: Mapping[str, int]) -> None:
    """Evaluate, export the model, then write result.json last (its presence means the run is complete)."""
    valid_loss = session.evaluate()
    state = engine.full_state_dict(session.ds_engine, session.dist.is_main)
    session.clock()
    if session.dist.is_main:
        models.save_hf_model(hf_config, state, session.plan.manifest.tokenizer_path, session.plan.out / "hf")
        record = result_record(session.plan, valid_loss, session.progress, params, session.utilization)
        write_json_atomic(session.plan.out / "result.json", record)
    engine.barrier()


def result_record(plan: RunPlan, valid_loss: Mapping[str, float], progress: Progress, params: Mapping[str, int],
                  utilization: Utilization) -> dict:
    tokens = progress.step * plan.tokens_per_step
    tokens_per_s = tokens / progress.train_seconds
    return {
        "mixture": dict(plan.mixture.weights),
        "mixture_hash": plan.mixture.content_hash(),
        "valid_loss": dict(valid_loss),
        "tokens": tokens,
        "steps": progress.step,
        "wall_seconds": progress.wall_seconds,
        "tokens_per_s": tokens_per_s,
        "mfu": utilization.mfu(tokens_per_s),
        "matmul_peak_flops_per_s": utilization.peak_flops_per_s,
        "seed": plan.config.seed,
        "preset": plan.config.preset,
        "model": dataclasses.asdict(plan.shape),
        "params": dict(params),
        "seq_len": plan.config.seq_len,
        "global_batch": plan.batch.global_batch,
        "world_size": plan.batch.world,
        "zero_stage": plan.deepspeed.zero_stage,
    }


def run_record(plan: RunPlan, dist_env: engine.DistEnv, settings: dict, params: Mapping[str, int]) -> dict:
    """The resolved settings and software versions, kept beside the run."""
    return {
        "config": dataclasses.asdict(plan.config),
        "steps": plan.steps,
        "peak_lr": plan.peak_lr,
        "batch": dataclasses.asdict(plan.batch),
        "model": dataclasses.asdict(plan.shape),
        "params": dict(params),
        "mixture": plan.mixture.to_json(),
        "launcher": dataclasses.asdict(dist_env),
        "deepspeed_config": settings,
        "versions": engine.versions(),
    }


# ---- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="train.py",
        description="Train one model on a data mixture with DeepSpeed (a RegMix proxy or the target run). "
        "Launch with python, deepspeed, mpirun or srun. Exit codes: 0 done, 2 bad input, "
        f"{EXIT_REQUEUE} checkpointed after SIGTERM/SIGUSR1 (requeue with --resume auto).",
    )
    add = parser.add_argument
    add("--manifest", required=True, help="manifest.json of the prepared corpus (regmix-ds prepare)")
    add("--mixture", help='mixture JSON {"weights": {domain: w}}; may be omitted when the DeepSpeed config '
        'carries one in its "regmix" block (giving both requires they agree)')
    add("--deepspeed_config", "--deepspeed-config", dest="deepspeed_config", required=True,
        help="DeepSpeed JSON config (see ds_configs/); its lr is the default peak lr")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--preset", choices=list(models.PRESETS), help="model size preset")
    model.add_argument("--model-config", help="JSON/YAML with layers, heads, hidden, ffn [, kv_heads, rope_theta]")
    add("--seq-len", type=int, default=2048, help="tokens per sequence (default 2048)")
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--train-tokens", type=int, help="training tokens (rounded up to whole global batches)")
    budget.add_argument("--steps", type=int, help="optimizer steps")
    add("--lr", type=float, help="peak learning rate (default: the DeepSpeed config's optimizer lr)")
    add("--schedule", choices=SCHEDULES, default="constant",
        help="constant after warmup (RegMix proxies, default) or cosine down to --lr-floor x peak (target)")
    add("--warmup", type=int, default=0, help="linear warmup steps (default 0)")
    add("--lr-floor", type=float, default=0.1, help="end of the cosine schedule as a fraction of the peak (default 0.1)")
    add("--seed", type=int, default=0, help="seed of model initialisation and data order (default 0)")
    add("--out", required=True, help="run directory: metrics.jsonl, checkpoints/, hf/, result.json")
    add("--eval-interval", type=int, default=0, help="validate every N steps (default 0: only at the end)")
    add("--eval-batches", type=int, default=4,
        help="validation micro-batches per domain and target, always the same first samples (default 4)")
    add("--save-interval", type=int, default=0, help="checkpoint every N steps (default 0: only on a signal)")
    add("--keep-checkpoints", type=int, default=1, help="complete checkpoints to keep (default 1)")
    add("--resume", choices=["auto"], help="auto: continue from the newest complete checkpoint in --out, "
        "or exit 0 at once if result.json exists")
    add("--max-epochs", type=float, help="cap on passes over any one domain (default: the sampler's)")
    add("--log-interval", type=int, default=1, help="print a progress line every N steps (default 1)")
    add("--local_rank", "--local-rank", dest="local_rank", type=int, help="set by the deepspeed launcher")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{name: value for name, value in vars(args).items() if name in fields})


def main(argv: list[str] | None = None) -> int:
    """Parse, train, and return the exit code (the caller exits through `engine.shutdown`)."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        return train(config, engine.discover_launch(local_rank_flag=args.local_rank))
    except RegmixError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2

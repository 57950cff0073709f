"""What one training run will do, decided before anything starts, and the data it reads.

`plan_run` reads and cross-checks every input of a run (manifest, mixture, DeepSpeed config,
model shape, budget) and writes nothing, so every bad input fails here, identically on every
rank, before a process group exists. The rest turns a plan into the numbers a step needs:
the learning rate of a step, the blended training stream and the fixed validation samples.

Determinism: the model is initialised from the seed (`model.build_model`), the data order is
a function of (mixture, seed) and the sample counter, the learning rate a function of the step,
and nothing else draws random numbers (no dropout), so a resumed run repeats the uninterrupted
one step for step.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from regmix_ds.core.config import ModelShape, TrainConfig, load_shape
from regmix_ds.core.dsconfig import BatchSizes, DeepSpeedSettings, choose_mixture, load_ds_config
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.layout import RunDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.blend import BlendedDataset, BlendedSampler, fixed_samples
from regmix_ds.data.indexed import open_split, split_files


@dataclass(frozen=True)
class RunPlan:
    """Everything decided before any process group exists: all bad input fails here, on every rank."""

    config: TrainConfig
    manifest: Manifest
    mixture: Mixture
    deepspeed: DeepSpeedSettings
    batch: BatchSizes
    steps: int
    shape: ModelShape
    peak_lr: float

    @property
    def run(self) -> RunDir:
        """The run directory and the files in it."""
        return RunDir(Path(self.config.out))

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
    manifest.check_tokenizer()  # the model is saved with it at the end: fail now, not after training
    deepspeed = load_ds_config(config.deepspeed_config)
    flag_mixture = Mixture.load(config.mixture) if config.mixture is not None else None
    mixture = choose_mixture(flag_mixture, deepspeed)
    mixture.check_domains(manifest.domains, config.mixture or config.deepspeed_config)
    batch = deepspeed.batch_sizes(world_size)
    steps = config.steps or math.ceil(config.train_tokens / (batch.global_batch * config.seq_len))
    if config.warmup > steps:
        raise RegmixError("--warmup", f"{config.warmup} steps is longer than the run ({steps} steps)")
    shape = load_shape(config.preset, config.model_config)
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


def training_data(plan: RunPlan, rank: int) -> tuple[BlendedDataset, BlendedSampler]:
    """The blended training stream, long enough for every step (repetition cap checked now)."""
    streams = {name: open_split(split) for name, split in plan.manifest.train.items()}
    shards = {name: split_files(split) for name, split in plan.manifest.train.items()}
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
        name: fixed_samples(open_split(split), seq_len, count, split_files(split), plan.manifest.vocab_size)
        for name, split in plan.manifest.valid.items()
    }

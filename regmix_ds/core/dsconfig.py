"""DeepSpeed JSON configs: loading, the `"regmix"` block, and the batch-size arithmetic.

DeepSpeed ignores unknown top-level keys, so a mixture travels inside the launch config as

    {"regmix": {"mixture": {"weights": {"<domain>": w, ...}, "hash": "...", ...metadata}}, ...}

`load_ds_config` validates that block into a `Mixture` and strips it: DeepSpeed never sees it.
The batch sizes obey global = micro x accumulation x world; a config may leave one of the
three out (DeepSpeed derives it), and `resolve_batch` checks the rest against the real world
size before any process group exists, with an error that shows the arithmetic.

This module does not import DeepSpeed (only `regmix_ds.engine` does).
"""
from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_json
from regmix_ds.core.mixture import Mixture

REGMIX_KEY = "regmix"
MICRO = "train_micro_batch_size_per_gpu"
ACCUMULATION = "gradient_accumulation_steps"
GLOBAL = "train_batch_size"
OPTIMIZERS = ("AdamW", "Adam")


@dataclass(frozen=True)
class BatchSizes:
    """Sequences per rank per forward, forwards per optimizer step, and data-parallel ranks."""

    micro: int
    accumulation: int
    world: int

    @property
    def global_batch(self) -> int:
        """Sequences per optimizer step over all ranks."""
        return self.micro * self.accumulation * self.world


@dataclass(frozen=True)
class DeepSpeedSettings:
    """A validated DeepSpeed config file, with the `"regmix"` block taken out."""

    path: str
    settings: Mapping[str, Any]
    """What DeepSpeed gets (read-only; `for_world` returns a resolved, editable copy)."""
    mixture: Mixture | None
    """The mixture of the `"regmix"` block, if the file has one."""

    @property
    def zero_stage(self) -> int:
        return int(self.settings.get("zero_optimization", {}).get("stage", 0))

    @property
    def precision(self) -> str:
        """'bf16', 'fp16' or 'fp32' (DeepSpeed's default)."""
        for name in ("bf16", "fp16"):
            if self.settings.get(name, {}).get("enabled", False):
                return name
        return "fp32"

    @property
    def learning_rate(self) -> float:
        return float(self.settings["optimizer"].get("params", {}).get("lr", 1e-3))

    @property
    def weight_decay(self) -> float:
        return float(self.optimizer_params.get("weight_decay", 0.0))

    @property
    def optimizer_params(self) -> Mapping[str, Any]:
        """The optimizer's `params` block (lr, betas, eps, weight_decay, ...)."""
        return self.settings["optimizer"].get("params", {})

    @property
    def gradient_clipping(self) -> float:
        """The global gradient-norm clip DeepSpeed applies before each step (0: none)."""
        return float(self.settings.get("gradient_clipping", 0.0))

    def batch_sizes(self, world_size: int) -> BatchSizes:
        """The batch sizes on `world_size` ranks: the missing one of the three derived, or all three checked."""
        return resolve_batch(self.settings, world_size, self.path)

    def for_world(self, world_size: int, lr: float | None = None) -> dict:
        """The dict to hand to `deepspeed.initialize`: all three batch sizes set, `lr` applied."""
        batch = self.batch_sizes(world_size)
        resolved = copy.deepcopy(dict(self.settings))
        resolved.update({MICRO: batch.micro, ACCUMULATION: batch.accumulation, GLOBAL: batch.global_batch})
        if lr is not None:
            resolved["optimizer"].setdefault("params", {})["lr"] = lr
        return resolved


def load_ds_config(path: str | os.PathLike) -> DeepSpeedSettings:
    """Read and check a DeepSpeed JSON config; its `"regmix"` block becomes `.mixture`."""
    where = str(path)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise RegmixError(where, "expected a JSON object")
    mixture = mixture_from_block(raw.pop(REGMIX_KEY, None), where)
    _check_batch_keys(raw, where)
    _check_optimizer(raw, where)
    _check_zero_stage(raw, where)
    if "scheduler" in raw:
        raise RegmixError(where, 'remove the "scheduler" block: the schedule comes from --schedule and --warmup')
    return DeepSpeedSettings(where, MappingProxyType(raw), mixture)


def mixture_from_block(block: Any, where: str) -> Mixture | None:
    """Validate a `"regmix"` block; its stored hash, if any, must match the weights."""
    if block is None:
        return None
    if not isinstance(block, dict) or set(block) - {"mixture"}:
        raise RegmixError(where, f'"{REGMIX_KEY}" must be an object with only the key "mixture"')
    entry = block.get("mixture")
    if entry is None:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("weights"), dict):
        raise RegmixError(where, f'"{REGMIX_KEY}.mixture" must be an object with a "weights" mapping')
    mixture = Mixture.from_weights(entry["weights"], source=f"{where}: {REGMIX_KEY}.mixture")
    stored = entry.get("hash")
    if stored is not None and stored != mixture.content_hash():
        raise RegmixError(
            where,
            f'"{REGMIX_KEY}.mixture.hash" is {stored} but the weights hash to {mixture.content_hash()} '
            "(edited by hand?)",
        )
    return mixture


def with_mixture(settings: Mapping[str, Any], mixture: Mixture, **metadata: Any) -> dict:
    """A copy of a DeepSpeed config dict carrying `mixture` in its `"regmix"` block."""
    return {**copy.deepcopy(dict(settings)), REGMIX_KEY: {"mixture": mixture.to_json(**metadata)}}


def choose_mixture(from_flag: Mixture | None, config: DeepSpeedSettings) -> Mixture:
    """`--mixture` or the config's block; both may be given only if they hold the same weights."""
    block = config.mixture
    if from_flag is None and block is None:
        raise RegmixError("--mixture", f'required: {config.path} has no "{REGMIX_KEY}" block with a mixture')
    if from_flag is not None and block is not None and from_flag.content_hash() != block.content_hash():
        raise RegmixError(
            "--mixture",
            f'{from_flag.source} (hash {from_flag.content_hash()}) differs from the "{REGMIX_KEY}" block of '
            f"{config.path} (hash {block.content_hash()}); pass one of them",
        )
    return from_flag if from_flag is not None else block


def resolve_batch(settings: Mapping[str, Any], world_size: int, where: str) -> BatchSizes:
    """Fill in the missing one of (global, micro, accumulation) for `world_size`, or check all three."""
    micro, accumulation, total = settings.get(MICRO), settings.get(ACCUMULATION), settings.get(GLOBAL)
    if micro is not None and accumulation is None and total is not None:
        accumulation = _exact_quotient(total, micro * world_size, where, "accumulation steps")
    elif micro is None and total is not None:
        accumulation = accumulation or 1
        micro = _exact_quotient(total, accumulation * world_size, where, "micro batch")
    accumulation = accumulation or 1
    batch = BatchSizes(micro, accumulation, world_size)
    if total is not None and batch.global_batch != total:
        raise RegmixError(
            where,
            f"{GLOBAL} {total} != {MICRO} {micro} x {ACCUMULATION} {accumulation} x world size {world_size} "
            f"(= {batch.global_batch}); fix one, or leave one of the three out",
        )
    return batch


def _exact_quotient(total: int, divisor: int, where: str, what: str) -> int:
    if total % divisor:
        raise RegmixError(where,
                          f"{GLOBAL} {total} is not a multiple of {divisor}, so no whole {what} fits this world size")
    return total // divisor


def _check_batch_keys(raw: Mapping[str, Any], where: str) -> None:
    for key in (MICRO, ACCUMULATION, GLOBAL):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise RegmixError(where, f"{key} must be a positive integer, got {value!r}")
    if raw.get(MICRO) is None and raw.get(GLOBAL) is None:
        raise RegmixError(where, f"set {MICRO} or {GLOBAL}")


def _check_optimizer(raw: Mapping[str, Any], where: str) -> None:
    """The optimizer and clipping values torch would refuse (or train to NaN with), checked up front."""
    optimizer = raw.get("optimizer")
    if not isinstance(optimizer, dict) or optimizer.get("type") not in OPTIMIZERS:
        raise RegmixError(where, f'needs an "optimizer" block of type {" or ".join(OPTIMIZERS)}')
    params = optimizer.get("params", {})
    if not isinstance(params, dict):
        raise RegmixError(where, '"optimizer.params" must be an object')
    _check_number(params.get("lr", 1e-3), where, "optimizer.params.lr", above=0.0)
    _check_number(params.get("weight_decay", 0.0), where, "optimizer.params.weight_decay", low=0.0)
    _check_number(params.get("eps", 1e-8), where, "optimizer.params.eps", above=0.0)
    betas = params.get("betas", [0.9, 0.999])
    if not isinstance(betas, (list, tuple)) or len(betas) != 2:
        raise RegmixError(where, f"optimizer.params.betas must be a list of two numbers, got {betas!r}")
    for i, beta in enumerate(betas):
        _check_number(beta, where, f"optimizer.params.betas[{i}]", low=0.0, below=1.0)
    _check_number(raw.get("gradient_clipping", 0.0), where, "gradient_clipping", low=0.0)


def _check_number(value: Any, where: str, key: str, low: float | None = None, above: float | None = None,
                  below: float | None = None) -> None:
    """A finite number (not a boolean) with `low <= value`, `above < value` and `value < below`."""
    bounds = [f">= {low}" if low is not None else "", f"> {above}" if above is not None else "",
              f"< {below}" if below is not None else ""]
    wanted = " and ".join(bound for bound in bounds if bound)
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or (low is not None and value < low) or (above is not None and value <= above)
            or (below is not None and value >= below)):
        raise RegmixError(where, f"{key} must be a finite number {wanted}, got {value!r}")


def _check_zero_stage(raw: Mapping[str, Any], where: str) -> None:
    zero = raw.get("zero_optimization", {})
    stage = zero.get("stage", 0) if isinstance(zero, dict) else None
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise RegmixError(where, "zero_optimization.stage must be 0, 1, 2 or 3")

"""Experiment configuration (`exp.yaml`): frozen dataclasses of simple types that validate themselves.

One YAML file drives every stage. Each stage owns one section; a section is parsed by
`section_from_dict`, which rejects unknown keys and wrong types with a one-line error naming
the file and the key, so a typo never silently falls back to a default.
"""
from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar

from regmix_ds.errors import RegmixError
from regmix_ds.files import check_safe_name, read_mapping

T = TypeVar("T")


def section_from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass `cls` from a mapping, checking key names and scalar types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise RegmixError(where, "expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RegmixError(where, f"unknown key(s) {', '.join(map(str, unknown))}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise RegmixError(where, str(err)) from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is typing.Union:
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(h for h in options if h is not type(None))
        origin = typing.get_origin(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise RegmixError(where, f"expected {hint.__name__}, got {value!r}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise RegmixError(where, f"expected a list, got {value!r}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return section_from_dict(hint, value, where)
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        if not isinstance(value, Mapping):
            raise RegmixError(where, f"expected a mapping, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2:
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    return value


@dataclass(frozen=True)
class DomainSource:
    """Where one domain's raw text lives."""

    paths: tuple[str, ...]
    """jsonl / json / parquet / txt files, or one local HF dataset directory (`save_to_disk`)."""
    text_field: str = "text"
    """The column holding the document text (ignored for .txt: one document per line)."""


@dataclass(frozen=True)
class DataConfig:
    """The `data:` section, read by `regmix-ds prepare`."""

    domains: dict[str, DomainSource]
    """Domain name -> its raw text. Names become file names and mixture keys."""
    tokenizer: str = "tokenizer"
    """A local tokenizer directory (relative to the config file) or a hub name."""
    targets: dict[str, DomainSource] = field(default_factory=dict)
    """Extra validation-only sets (for example the target you optimise the mixture for)."""
    valid_documents: int = 200
    """Documents per domain held out for validation, drawn with `seed`; the rest train, in input order."""
    seed: int = 0
    """Seed of the train/valid split shuffle."""
    num_proc: int = 2
    """Processes for `datasets.map` tokenisation."""
    vocab_size: int = 4096
    """Vocabulary of the tokenizer trained by `prepare --train-tokenizer`."""

    def __post_init__(self) -> None:
        if not self.domains:
            raise RegmixError("data.domains", "no domains configured")
        for name in [*self.domains, *self.targets]:
            check_safe_name(name, "data.domains", "domain name")
        clash = sorted(set(self.domains) & set(self.targets))
        if clash:
            raise RegmixError("data.targets", f"name(s) also used as a domain: {', '.join(clash)}")
        if self.valid_documents < 1:
            raise RegmixError("data.valid_documents", "must be >= 1")
        if self.num_proc < 1:
            raise RegmixError("data.num_proc", "must be >= 1")


# Statistically the swarm RegMix released (data/train_mixture_1m.csv): its mechanism, with
# settings fitted to that file, because the constants in its script give far sparser mixtures.
# min_weight 5e-4 is the file's resolution (3 decimals): below it a weight shows there as 0.
_REGMIX_RELEASED = dict(
    temperature=0.1, min_strength=1.0, max_strength=5.0, strength_steps=15,
    min_weight=5e-4, cap=15.0, max_epochs=15.0, dedup_distance=1e-5,
)
SWARM_PRESETS: dict[str, dict[str, float]] = {
    # The released swarm's shape, plus the usual 4-epoch repetition limit for the proxies and a
    # coarser dedup: two mixtures 0.1% apart would train practically the same proxy.
    "default": {**_REGMIX_RELEASED, "max_epochs": 4.0, "dedup_distance": 1e-3},
    "regmix-paper": _REGMIX_RELEASED,
    # The constants of RegMix's mixture_config/synthesize_mixture.py, as published.
    "regmix-script": {**_REGMIX_RELEASED, "temperature": 0.5, "min_strength": 0.1, "min_weight": 2e-4},
}


@dataclass(frozen=True)
class SwarmConfig:
    """The `swarm:` section, read by `regmix-ds swarm`. Sampling settings left unset come from `preset`.

    Each mixture: a strength s drawn from a log-spaced grid, weights ~ Dirichlet(s * prior^temperature),
    weights below `min_weight` set to 0 and the rest renormalised; kept only if every domain stays
    under its usage cap and it is not a near-duplicate of a mixture already kept.
    """

    n: int = 512
    """Number of mixtures (one proxy run each)."""
    seed: int = 0
    """Seed of the one random generator every draw comes from."""
    preset: str = "default"
    """Named bundle of the sampling settings below (see SWARM_PRESETS); set fields override it."""
    temperature: Optional[float] = None
    """Exponent on the prior before sampling: 1 keeps it, 0 treats every domain alike."""
    min_strength: Optional[float] = None
    """Smallest Dirichlet strength (small: mixtures dominated by few domains)."""
    max_strength: Optional[float] = None
    """Largest Dirichlet strength (large: mixtures close to the tempered prior)."""
    strength_steps: Optional[int] = None
    """Points of the log-spaced strength grid; each mixture draws one uniformly."""
    min_weight: Optional[float] = None
    """Weights below this become 0 (too few samples of a domain to matter), the rest renormalised."""
    cap: Optional[float] = None
    """A domain's weight may be at most cap x its prior share."""
    max_epochs: Optional[float] = None
    """With `proxy_tokens`: no domain may need more than this many passes over its train tokens."""
    proxy_tokens: Optional[int] = None
    """Tokens one proxy trains on; enables the `max_epochs` cap (needs manifest token counts)."""
    dedup_distance: Optional[float] = None
    """A mixture closer than this (L1) to one already kept is rejected as a near-duplicate."""

    def __post_init__(self) -> None:
        _require(self.n >= 1, "n", "must be >= 1")
        _require(self.seed >= 0, "seed", "must be >= 0")
        if self.preset not in SWARM_PRESETS:
            raise RegmixError("swarm.preset", f"unknown preset {self.preset!r} (known: {', '.join(SWARM_PRESETS)})")
        for name in ("min_strength", "max_strength", "cap", "max_epochs"):
            _require_number(self, name, positive=True)
        for name in ("temperature", "min_weight", "dedup_distance"):
            _require_number(self, name, positive=False)
        _require(self.min_weight is None or self.min_weight < 1, "min_weight", "must be < 1")
        _require(self.strength_steps is None or self.strength_steps >= 1, "strength_steps", "must be >= 1")
        _require(self.proxy_tokens is None or self.proxy_tokens >= 1, "proxy_tokens", "must be >= 1")
        if self.min_strength is not None and self.max_strength is not None:
            _require(self.min_strength <= self.max_strength, "min_strength",
                     f"{self.min_strength:g} exceeds max_strength {self.max_strength:g}")

    def resolved(self) -> "SwarmConfig":
        """This config with every sampling setting it leaves unset taken from its preset."""
        preset = SWARM_PRESETS[self.preset]
        return dataclasses.replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})


def _require(condition: bool, name: str, problem: str) -> None:
    if not condition:
        raise RegmixError(f"swarm.{name}", problem)


def _require_number(config: SwarmConfig, name: str, positive: bool) -> None:
    value = getattr(config, name)
    if value is not None:
        ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
        _require(ok, name, f"must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class ProxyConfig:
    """The `proxy:` section: how each swarm member is trained (`regmix-ds proxy`, `slurm/proxies.sh`).

    Every proxy trains the same model from the same seed for the same tokens; only its mixture
    differs, so differences in validation loss are the mixture's doing (RegMix's protocol).
    """

    deepspeed_config: str
    """DeepSpeed JSON (micro-batch, accumulation, optimizer, ZeRO stage), relative to this file."""
    train_tokens: int
    """Training tokens per proxy (RegMix: 1B for its 1M-parameter proxies)."""
    preset: str = "proxy-1m"
    """Model preset (`train.py --help` lists them)."""
    seq_len: int = 2048
    """Tokens per training sequence."""
    lr: Optional[float] = None
    """Peak learning rate; unset keeps the DeepSpeed config's optimizer lr."""
    warmup: int = 0
    """Linear warmup steps, then a constant rate (RegMix's proxy schedule)."""
    seed: int = 0
    """Model initialisation and data-order seed, the same for every proxy."""
    eval_batches: int = 4
    """Validation micro-batches per domain and target set."""
    save_interval: int = 0
    """Checkpoint every N steps (0: only when Slurm signals the time limit or a requeue)."""
    max_epochs: Optional[float] = None
    """Repetition cap per domain (unset: the sampler's default)."""
    group_size: int = 1
    """Proxies trained together in one process as one stacked model (`regmix_ds.group`), per Slurm
    array task or local job; 1 trains each proxy alone under DeepSpeed."""
    save_model: bool = False
    """Grouped proxies also write `proxies/n<i>/hf/` (a proxy trained alone always does)."""

    def __post_init__(self) -> None:
        for name in ("train_tokens", "seq_len", "eval_batches", "group_size"):
            if getattr(self, name) < 1:
                raise RegmixError(f"proxy.{name}", "must be >= 1")
        for name in ("warmup", "save_interval", "seed"):
            if getattr(self, name) < 0:
                raise RegmixError(f"proxy.{name}", "must be >= 0")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise RegmixError("proxy.lr", f"must be a positive number, got {self.lr}")


REGRESSORS = ("lightgbm", "linear")


def _check(condition: bool, where: str, problem: str) -> None:
    if not condition:
        raise RegmixError(where, problem)


@dataclass(frozen=True)
class FitConfig:
    """The `fit:` section (or `regmix-ds fit` flags): the regression from mixture to target loss."""

    target: str = ""
    """Loss to predict: `pile_cc`, or a weighted sum `pile_cc=0.7,github=0.3` (short loss names)."""
    regressor: str = "lightgbm"
    """`lightgbm` (gradient-boosted trees, RegMix's choice) or `linear` (least squares)."""
    trees: int = 1000
    """Most trees; k-fold cross-validation inside the training runs picks how many are kept."""
    learning_rate: float = 0.01
    subsample: float = 0.8
    """Fraction of runs each tree sees (LightGBM bagging); 1.0 is RegMix's exact setting."""
    min_data_in_leaf: int = 20
    """Fewest runs in a tree leaf (LightGBM's default, RegMix's); lower it for swarms of a few
    dozen runs, where 20 leaves a fold's trees no split at all."""
    folds: int = 5
    """k of the k-fold cross-validation that reports quality and picks the tree count."""
    early_stopping: int = 100
    """Stop adding trees when the mean fold loss has not improved for this many."""
    seed: int = 0
    threads: int = 1
    """LightGBM training threads. Proxy tables are tiny, so more threads only add
    synchronisation (on a busy 2-core machine, OpenMP spin-waiting made 2 threads 90x slower)."""

    def __post_init__(self) -> None:
        _check(self.regressor in REGRESSORS, "fit.regressor", f"unknown {self.regressor!r}; use {' or '.join(REGRESSORS)}")
        for name in ("trees", "early_stopping", "threads", "min_data_in_leaf"):
            _check(getattr(self, name) >= 1, f"fit.{name}", "must be >= 1")
        _check(self.folds >= 2, "fit.folds", "must be >= 2")
        _check(0 < self.learning_rate <= 1, "fit.learning_rate", "must be in (0, 1]")
        _check(0 < self.subsample <= 1, "fit.subsample", "must be in (0, 1]")


@dataclass(frozen=True)
class SimulateConfig:
    """The `simulate:` section (or `regmix-ds simulate` flags): candidates, constraints, choice."""

    candidates: int = 1_000_000
    """Candidates drawn from Dirichlet(prior x strength), before the support filter."""
    strength_min: float = 0.1
    strength_max: float = 5.0
    strengths: int = 15
    """Log-spaced Dirichlet strengths in [strength_min, strength_max]; candidates split evenly."""
    top_k: int = 128
    """Best candidates averaged into the chosen mixture."""
    bootstrap: int = 20
    """Refits on resampled proxy runs that give the intervals (0: no intervals)."""
    confidence: float = 0.95
    """Coverage of the percentile intervals."""
    seed: int = 0
    max_weight: dict[str, float] = field(default_factory=dict)
    """Explicit per-domain caps; each replaces that domain's largest training weight."""
    max_epochs: Optional[float] = None
    """With target_tokens: passes over a domain's training tokens (from the manifest) allowed."""
    target_tokens: Optional[int] = None
    """Tokens the target model trains on."""

    def __post_init__(self) -> None:
        _check(self.candidates >= 1, "simulate.candidates", "must be >= 1")
        _check(0 < self.strength_min <= self.strength_max, "simulate.strength_min", "need 0 < strength_min <= strength_max")
        _check(self.strengths >= 1, "simulate.strengths", "must be >= 1")
        _check(1 <= self.top_k <= self.candidates, "simulate.top_k", "must be between 1 and candidates")
        _check(self.bootstrap >= 0, "simulate.bootstrap", "must be >= 0")
        _check(0 < self.confidence < 1, "simulate.confidence", "must be in (0, 1)")
        _check(self.max_epochs is None or self.max_epochs > 0, "simulate.max_epochs", "must be > 0")
        _check(self.target_tokens is None or self.target_tokens > 0, "simulate.target_tokens", "must be > 0")
        _check(
            (self.max_epochs is None) == (self.target_tokens is None),
            "simulate.target_tokens",
            "give both max_epochs and target_tokens, or neither",
        )
        for name, cap in self.max_weight.items():
            _check(0 < cap <= 1, "simulate.max_weight", f"cap of {name!r} must be in (0, 1], got {cap}")


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment. Every relative path in it resolves against the config file's directory."""

    work_dir: str
    """Where every stage writes: data/, swarm/, proxies/, fit/, best.json."""
    data: DataConfig
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    proxy: Optional[ProxyConfig] = None
    """Needed by `proxy`, `run-swarm` and `slurm/proxies.sh`; the other stages run without it."""
    fit: FitConfig = field(default_factory=FitConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    path: str = ""
    """The file it was read from (set by `load`, used in error messages)."""

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ExperimentConfig":
        raw = read_mapping(path)
        where = str(path)
        if "work_dir" not in raw:
            raise RegmixError(where, "missing key work_dir")
        work_dir = Path(path).parent / str(raw["work_dir"])
        try:
            config = section_from_dict(cls, {**raw, "work_dir": str(work_dir)}, where)
        except RegmixError as err:
            # Sections validate themselves without knowing the file; name it for the user.
            if err.where == where:
                raise
            raise RegmixError(f"{where}: {err.where.removeprefix(where + '.')}", err.problem) from None
        return dataclasses.replace(config, path=where)

    @property
    def root(self) -> Path:
        return Path(self.work_dir)

    @property
    def manifest_path(self) -> Path:
        return self.root / "data" / "manifest.json"

    @property
    def swarm_dir(self) -> Path:
        return self.root / "swarm"

    @property
    def proxies_dir(self) -> Path:
        return self.root / "proxies"

    @property
    def results_path(self) -> Path:
        return self.root / "results.csv"

    @property
    def fit_dir(self) -> Path:
        return self.root / "fit"

    @property
    def best_path(self) -> Path:
        return self.root / "best.json"

    def require_proxy(self) -> ProxyConfig:
        if self.proxy is None:
            raise RegmixError(self.path, "no proxy: section (deepspeed_config, train_tokens, preset, ...)")
        return self.proxy

    def resolve(self, relative: str) -> Path:
        """A path from the config, taken relative to the config file's directory."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.path).parent / p

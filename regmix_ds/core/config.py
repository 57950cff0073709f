"""Every setting of regmix-ds, declared once: the exp.yaml sections and train.py's flags.

Each class is a frozen `Settings` dataclass (see `regmix_ds.core.settings`): a field's type,
default and docstring are its YAML key, its flag, its --help line and its README row. `validate`
holds the range and cross-field checks. `ExperimentConfig.load` reads one exp.yaml, in which
every relative path resolves against the file's own directory.

A proxy is trained with the settings train.py takes (`TrainSettings`), so `ProxyConfig`
extends them: the same field means the same thing in `proxy:` and on train.py's command line.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import read_mapping
from regmix_ds.core.layout import Tier, WorkDir
from regmix_ds.core.names import unsafe_name_problem
from regmix_ds.core.settings import Settings, load_section

# ---- the model ---------------------------------------------------------------------------------

ModelPreset = Literal["tiny", "demo", "proxy-1m", "proxy-60m", "target-1b"]
"""`tiny` is for tests, `demo` for the 2-core demo; the others follow RegMix (1M, 60M proxies)
and TinyLlama (1.1B target). Their shapes: `MODEL_PRESETS`."""


MIN_VOCAB = 257
"""The smallest vocabulary a byte-level BPE tokenizer has: 256 bytes and the end-of-text token."""
MAX_SWARM = 100_000
"""The most mixtures one swarm may hold: far above any plan (RegMix: 512), far below what exhausts memory."""
MAX_CANDIDATES = 50_000_000
"""The most candidates simulate scores: 50M x 17 domains x 8 bytes is 6.8 GB, most of this machine's headroom."""

@dataclass(frozen=True)
class ModelShape(Settings):
    """The size of a Llama decoder (a `--model-config` file); with a vocabulary and a sequence
    length it is a full model config."""

    SECTION = "model"

    layers: int
    """Transformer blocks."""
    heads: int
    """Attention heads (the head size is hidden / heads)."""
    hidden: int
    """Residual stream width."""
    ffn: int
    """Width of the SwiGLU feed-forward layer."""
    kv_heads: int = 0
    """Key/value heads for grouped-query attention; 0 means as many as `heads`."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""

    def validate(self) -> None:
        """Sizes >= 1, `hidden` split into heads of even size, kv_heads dividing heads, rope_theta > 0."""
        for name in ("layers", "heads", "hidden", "ffn"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        self.require(self.hidden % self.heads == 0 and (self.hidden // self.heads) % 2 == 0, "hidden",
                     f"{self.hidden} must split into {self.heads} heads of even size (RoPE)")
        kv_heads = self.kv_heads or self.heads
        self.require(kv_heads >= 1 and self.heads % kv_heads == 0, "kv_heads",
                     f"{self.kv_heads} must divide heads ({self.heads})")
        self.require(self.rope_theta > 0, "rope_theta", "must be > 0")


MODEL_PRESETS: dict[str, ModelShape] = {
    "tiny": ModelShape(layers=2, heads=2, hidden=16, ffn=32),
    "demo": ModelShape(layers=2, heads=4, hidden=64, ffn=128),
    "proxy-1m": ModelShape(layers=2, heads=8, hidden=256, ffn=512),
    "proxy-60m": ModelShape(layers=10, heads=8, hidden=768, ffn=1536),
    "target-1b": ModelShape(layers=22, heads=16, hidden=2048, ffn=5632, kv_heads=4),
}


def load_shape(preset: str | None, model_config: str | os.PathLike | None) -> ModelShape:
    """The shape named by a preset, or read from a JSON/YAML file of ModelShape fields."""
    if model_config is not None:
        return load_section(ModelShape, read_mapping(model_config), model_config, "model")
    if preset not in MODEL_PRESETS:
        raise RegmixError("--preset", f"unknown preset {preset!r} (known: {', '.join(MODEL_PRESETS)})")
    return MODEL_PRESETS[preset]


# ---- one training run (train.py; a proxy) -----------------------------------------------------------

Schedule = Literal["constant", "cosine"]


@dataclass(frozen=True, kw_only=True)
class TrainSettings(Settings):
    """How a model is trained: shared by train.py's flags and the `proxy:` section."""

    deepspeed_config: str = field(metadata={"flags": ("--deepspeed_config", "--deepspeed-config")})
    """DeepSpeed JSON: micro-batch, accumulation, optimizer, ZeRO stage, precision (its lr is the
    default peak lr; on train.py it may carry the mixture in a "regmix" block)."""
    preset: ModelPreset | None = None
    """Model size preset; give it or `model_config` (the proxy: section falls back to proxy-1m)."""
    model_config: str | None = None
    """JSON/YAML file of ModelShape fields (layers, heads, hidden, ffn, kv_heads, rope_theta), instead of a preset."""
    seq_len: int = 2048
    """Tokens per training sequence."""
    train_tokens: int | None = None
    """Training budget in tokens, rounded up to whole global batches (RegMix: 1B per 1M-parameter proxy)."""
    steps: int | None = None
    """Training budget in optimizer steps, instead of `train_tokens`."""
    lr: float | None = None
    """Peak learning rate; unset keeps the DeepSpeed config's optimizer lr."""
    schedule: Schedule = "constant"
    """`constant` after warmup (RegMix's proxies) or `cosine` down to lr_floor x peak (the target run)."""
    warmup: int = 0
    """Linear warmup steps."""
    lr_floor: float = 0.1
    """End of the cosine schedule, as a fraction of the peak."""
    seed: int = 0
    """Seed of model initialisation and of the data order (a proxy swarm shares one)."""
    eval_interval: int = 0
    """Evaluate every N steps (0: only at the end)."""
    eval_batches: int = 4
    """Validation micro-batches per domain and target set: always the same first samples."""
    save_interval: int = 0
    """Checkpoint every N steps (0: only when stopped by SIGTERM/SIGUSR1, as Slurm does before a time limit)."""
    keep_checkpoints: int = 1
    """Complete checkpoints kept; older ones are deleted after each save."""
    max_epochs: float | None = field(default=None, metadata={"infinite": True})
    """Cap on passes over any one domain's tokens; a mixture needing more is refused before training (unset: 4)."""
    log_interval: int = 0
    """Print a progress line every N steps (0: by time only, see log_seconds)."""
    log_seconds: float = 30.0
    """Print a progress line at least this often when the output is not a terminal (a terminal gets a bar)."""

    def validate(self) -> None:
        """Exactly one of preset/model_config and of train_tokens/steps; every count and rate in range."""
        self.require((self.preset is None) != (self.model_config is None), "preset",
                     f"give exactly one of {self.name_of('preset')} and {self.name_of('model_config')}")
        self.require((self.train_tokens is None) != (self.steps is None), "train_tokens",
                     f"give exactly one of {self.name_of('train_tokens')} and {self.name_of('steps')}")
        for name in ("seq_len", "eval_batches", "keep_checkpoints", "train_tokens", "steps"):
            value = getattr(self, name)
            self.require(value is None or value >= 1, name, f"must be >= 1, got {value}")
        for name in ("warmup", "eval_interval", "save_interval", "seed", "log_interval"):
            self.require(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")
        self.require(self.lr is None or self.lr > 0, "lr", f"must be a positive number, got {self.lr}")
        self.require(0.0 <= self.lr_floor <= 1.0, "lr_floor", f"must be within [0, 1], got {self.lr_floor}")
        self.require(self.max_epochs is None or self.max_epochs > 0, "max_epochs",
                     f"must be > 0, got {self.max_epochs}")
        self.require(self.log_seconds > 0, "log_seconds", f"must be > 0, got {self.log_seconds}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(TrainSettings):
    """One training run: train.py's command line (every field is a flag)."""

    manifest: str
    """manifest.json of the prepared corpus (regmix-ds prepare)."""
    mixture: str | None = None
    """Mixture JSON {"weights": {domain: w}}; may be left out when the DeepSpeed config carries one in its
    "regmix" block (giving both requires that they agree)."""
    out: str
    """Run directory: run.json, metrics.jsonl, checkpoints/, hf/, result.json."""
    resume: Literal["auto"] | None = None
    """`auto`: continue from the newest complete checkpoint in the run directory, or exit 0 at once if it
    holds result.json."""

    @classmethod
    def for_run(cls, settings: TrainSettings, **run: object) -> TrainConfig:
        """A run with `settings` (a proxy's, say) and the run's own fields (manifest, mixture, out, resume)."""
        shared = {f.name: getattr(settings, f.name) for f in dataclasses.fields(TrainSettings)}
        return cls(**shared, **run)


# ---- exp.yaml sections ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainSource(Settings):
    """Where one domain's documents live: raw text to tokenize, or existing Megatron shards."""

    SECTION = "data.domains.<name>"

    paths: tuple[str, ...] = ()
    """jsonl / json / parquet / txt files, or one local HF dataset directory (`save_to_disk`)."""
    text_field: str = "text"
    """The column holding the document text (ignored for .txt: one document per line)."""
    prefixes: tuple[str, ...] = ()
    """Existing Megatron shards instead of `paths`: prefixes (`<prefix>.bin` + `<prefix>.idx`) or globs of them,
    read in sorted order as one stream, never re-tokenized (a target's are its validation set)."""
    valid_prefixes: tuple[str, ...] = ()
    """A domain's own validation shards, prefixes or globs (unset: `valid_documents` are held out of `prefixes`)."""

    def validate(self) -> None:
        """Exactly one of paths and prefixes; valid_prefixes only beside prefixes."""
        self.require(bool(self.paths) != bool(self.prefixes), "paths",
                     "give paths (raw text) or prefixes (existing Megatron shards), exactly one of them")
        self.require(not self.valid_prefixes or bool(self.prefixes), "valid_prefixes",
                     "goes with prefixes (existing shards); raw text holds out valid_documents instead")


ShardBy = Literal["domain", "file"]


@dataclass(frozen=True)
class DataConfig(Settings):
    """The `data:` section, read by `regmix-ds prepare`."""

    SECTION = "data"

    domains: dict[str, DomainSource]
    """Domain name -> its raw text or existing shards. Names become file names and mixture keys."""
    tokenizer: str = "tokenizer"
    """A local tokenizer directory (relative to the config file) or a hub name."""
    targets: dict[str, DomainSource] = field(default_factory=dict)
    """Extra validation-only sets (for example the target you optimise the mixture for), same form as domains."""
    valid_documents: int = 200
    """Documents per domain held out for validation, drawn with `seed`; the rest train, in input order (with
    shard_by `file` each task draws its share, in proportion to its bytes; from existing shards, the last
    documents of each prefix, in proportion to its documents)."""
    seed: int = 0
    """Seed of the train/valid split."""
    num_proc: int = 2
    """Processes for `datasets.map` tokenisation."""
    vocab_size: int = 4096
    """Vocabulary of the tokenizer trained by `prepare --train-tokenizer`."""
    shard_by: ShardBy = "domain"
    """`domain`: each domain's raw text tokenized whole into one train and one valid shard; `file`: one task and
    one shard per input file (or `chunk_bytes` of one), run as a Slurm array (`slurm/prepare.sh`) or one after
    another by `prepare`, then merged into the manifest."""
    chunk_bytes: int | None = None
    """With shard_by `file`: .jsonl and .txt inputs larger than this are split into tasks of about this many
    bytes, at line boundaries (unset: one task per file)."""

    def validate(self) -> None:
        """At least one domain, file-safe names that no target repeats, counts >= 1, chunks only per file."""
        self.require(bool(self.domains), "domains", "no domains configured")
        for name in [*self.domains, *self.targets]:
            problem = unsafe_name_problem(name, "domain name")
            self.require(problem is None, "domains", problem or "")
        clash = sorted(set(self.domains) & set(self.targets))
        self.require(not clash, "targets", f"name(s) also used as a domain: {', '.join(clash)}")
        self.require(self.valid_documents >= 1, "valid_documents", "must be >= 1")
        self.require(self.num_proc >= 1, "num_proc", "must be >= 1")
        self.require(self.vocab_size >= MIN_VOCAB, "vocab_size",
                     f"must be >= {MIN_VOCAB} (the 256 bytes of the byte-level alphabet and the end-of-text token)")
        for name, target in self.targets.items():
            self.require(not target.valid_prefixes, "targets",
                         f"{name}.valid_prefixes: a target is validation only; list its shards under prefixes")
        self.require(self.chunk_bytes is None or self.chunk_bytes >= 1, "chunk_bytes", "must be >= 1")
        self.require(self.chunk_bytes is None or self.shard_by == "file", "chunk_bytes",
                     "splits files into tasks, which needs shard_by: file")


SwarmPreset = Literal["default", "regmix-paper", "regmix-script"]

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
class SwarmConfig(Settings):
    """The `swarm:` section, read by `regmix-ds swarm`. Sampling settings left unset come from `preset`.

    Each mixture: a strength s drawn from a log-spaced grid, weights ~ Dirichlet(s * prior^temperature),
    weights below `min_weight` set to 0 and the rest renormalised; kept only if every domain stays
    under its usage cap and it is not a near-duplicate of a mixture already kept.
    """

    SECTION = "swarm"

    n: int = 512
    """Number of mixtures (one proxy run each)."""
    seed: int = 0
    """Seed of the one random generator every draw comes from: same seed, byte-identical swarm."""
    preset: SwarmPreset = "default"
    """Bundle of the sampling settings below (`regmix-paper` matches RegMix's released swarm);
    set fields override it."""
    temperature: float | None = None
    """Exponent on the prior before sampling: 1 keeps it, 0 treats every domain alike (unset: the preset's)."""
    min_strength: float | None = None
    """Smallest Dirichlet strength; small gives mixtures dominated by a few domains (unset: the preset's)."""
    max_strength: float | None = None
    """Largest Dirichlet strength; large gives mixtures close to the tempered prior (unset: the preset's)."""
    strength_steps: int | None = None
    """Points of the log-spaced strength grid; each mixture draws one uniformly (unset: the preset's)."""
    min_weight: float | None = None
    """Weights below this become 0 and the rest are renormalised (unset: the preset's)."""
    cap: float | None = None
    """A domain's weight may be at most cap x its prior share (unset: the preset's)."""
    max_epochs: float | None = None
    """No domain may need more than this many passes over its train tokens at `proxy_tokens` (unset: the preset's)."""
    proxy_tokens: int | None = None
    """Tokens one proxy trains on, for the `max_epochs` cap (unset: proxy.train_tokens)."""
    dedup_distance: float | None = None
    """A mixture closer than this (L1) to one already kept is rejected as a near-duplicate (unset: the preset's)."""
    explore: float = 0.25
    """A later round (`swarm --next-round`): the share of its mixtures drawn afresh as round 1 draws; the
    rest sample the neighbourhoods of the current fit's best candidates."""
    focus: int = 8
    """A later round: how many of the best predicted candidates it samples around."""
    focus_min_strength: float = 20.0
    """A later round: the smallest Dirichlet strength around a candidate (high strengths stay close to it)."""
    focus_max_strength: float = 200.0
    """A later round: the largest Dirichlet strength around a candidate; each draw picks one log-uniformly."""

    def validate(self) -> None:
        """Counts >= 1, each sampling setting that is set within its range, min_strength <= max_strength."""
        self.require(1 <= self.n <= MAX_SWARM, "n", f"must be between 1 and {MAX_SWARM:,}, got {self.n:,} "
                     "(RegMix trained 512; each member is a proxy run)")
        self.require(self.seed >= 0, "seed", "must be >= 0")
        for name in ("min_strength", "max_strength", "cap", "max_epochs"):
            value = getattr(self, name)
            self.require(value is None or value > 0, name, f"must be a finite number > 0, got {value!r}")
        for name in ("temperature", "min_weight", "dedup_distance"):
            value = getattr(self, name)
            self.require(value is None or value >= 0, name, f"must be a finite number >= 0, got {value!r}")
        self.require(self.min_weight is None or self.min_weight < 1, "min_weight", "must be < 1")
        self.require(self.strength_steps is None or self.strength_steps >= 1, "strength_steps", "must be >= 1")
        self.require(self.proxy_tokens is None or self.proxy_tokens >= 1, "proxy_tokens", "must be >= 1")
        if self.min_strength is not None and self.max_strength is not None:
            self.require(self.min_strength <= self.max_strength, "min_strength",
                         f"{self.min_strength:g} exceeds max_strength {self.max_strength:g}")
        self.require(0 <= self.explore <= 1, "explore", f"must be within [0, 1], got {self.explore}")
        self.require(self.focus >= 1, "focus", f"must be >= 1, got {self.focus}")
        self.require(0 < self.focus_min_strength <= self.focus_max_strength, "focus_min_strength",
                     "need 0 < focus_min_strength <= focus_max_strength")

    def resolved(self) -> SwarmConfig:
        """This config with every sampling setting it leaves unset taken from its preset."""
        preset = SWARM_PRESETS[self.preset]
        return dataclasses.replace(self, **{k: v for k, v in preset.items() if getattr(self, k) is None})


DEFAULT_PROXY_PRESET = "proxy-1m"


@dataclass(frozen=True, kw_only=True)
class ProxyConfig(TrainSettings):
    """The `proxy:` section: how each swarm member trains (`regmix-ds proxy`, `slurm/proxies.sh`).

    Every proxy trains the same model from the same seed for the same tokens; only its mixture
    differs, so differences in validation loss are the mixture's doing (RegMix's protocol). The
    train.py settings mean the same here; the model is `proxy-1m` unless preset or model_config
    says otherwise, and relative paths resolve against the config file.
    """

    SECTION = "proxy"

    group_size: int = 1
    """Proxies trained together in one process as one stacked model, per Slurm array task or local job;
    1 trains each proxy alone under DeepSpeed."""
    save_model: bool = False
    """Grouped proxies also write `proxies/n<i>/hf/` (a proxy trained alone always does)."""
    compile: bool = False
    """Grouped proxies run the stacked decoder layers through `torch.compile` (for GPUs; the first step pays the
    compile time, 34 s for the tiny test model on 2 CPU cores)."""

    def validate(self) -> None:
        """The proxy-1m preset when no model is given, then the TrainSettings checks and group_size >= 1."""
        if self.preset is None and self.model_config is None:
            object.__setattr__(self, "preset", DEFAULT_PROXY_PRESET)
        super().validate()
        self.require(self.group_size >= 1, "group_size", "must be >= 1")


@dataclass(frozen=True)
class TransferConfig(Settings):
    """The `transfer:` section (`regmix-ds transfer`): does the swarm's ranking hold for larger proxies?

    Some swarm mixtures, spread over the fit's predicted range, plus the chosen and the natural
    mixture, are trained again at a larger size (the proxy settings with the model and budget
    below), as the `transfer` tier (`slurm/proxies.sh exp.yaml transfer`); their rank agreement
    with the small proxies decides the verdict.
    """

    SECTION = "transfer"

    preset: ModelPreset | None = "proxy-60m"
    """The larger proxies' model preset (or give `model_config`)."""
    model_config: str | None = None
    """JSON/YAML of ModelShape fields for the larger proxies, instead of a preset."""
    train_tokens: int | None = None
    """Training tokens per larger proxy (unset: the proxy section's budget)."""
    group_size: int | None = None
    """Larger proxies per array task or local job (unset: proxy.group_size)."""
    count: int = 16
    """Swarm mixtures trained again at the larger size, spread evenly over the fit's predicted target."""
    min_spearman: float = 0.8
    """The verdict's threshold: the ranking transfers when the lower end of the Spearman interval reaches it."""
    bootstrap: int = 2000
    """Resamples of the compared mixtures behind the Spearman and Kendall intervals."""
    confidence: float = 0.95
    """Coverage asked of those intervals."""
    seed: int = 0
    """Seed of the bootstrap resamples."""

    def validate(self) -> None:
        """A model given one way only; counts and the threshold within range."""
        self.require(self.preset is None or self.model_config is None, "preset",
                     f"give {self.name_of('preset')} or {self.name_of('model_config')}, not both")
        self.require(self.train_tokens is None or self.train_tokens >= 1, "train_tokens", "must be >= 1")
        self.require(self.group_size is None or self.group_size >= 1, "group_size", "must be >= 1")
        self.require(self.count >= 3, "count", f"must be >= 3 (a rank correlation needs points), got {self.count}")
        self.require(-1 <= self.min_spearman <= 1, "min_spearman", "must be within [-1, 1]")
        self.require(self.bootstrap >= 1, "bootstrap", "must be >= 1")
        self.require(0 < self.confidence < 1, "confidence", "must be in (0, 1)")
        self.require(self.seed >= 0, "seed", "must be >= 0")


Regressor = Literal["lightgbm", "linear", "loglinear", "gp", "bagged", "auto"]
IntervalMethod = Literal["percentile", "basic", "normal"]
Proposer = Literal["topk", "optimize"]


@dataclass(frozen=True)
class FitConfig(Settings):
    """The `fit:` section (or `regmix-ds fit` flags): the regression from mixture to target loss."""

    SECTION = "fit"

    target: str | None = None
    """Loss to predict: a short name (`pile_cc`), a loss column, or a weighted sum `pile_cc=0.7,github=0.3`
    (required by fit)."""
    regressor: Regressor = "lightgbm"
    """`lightgbm` (gradient-boosted trees, RegMix's choice), `linear` (least squares), `loglinear` (the
    data-mixing law c + exp(t . w)), `gp` (a Gaussian process on sqrt(w)), `bagged` (the mean of `members`
    LightGBM models), or `auto`: each of them k-fold cross-validated, the highest Spearman kept."""
    trees: int = 1000
    """Most trees; k-fold cross-validation inside the training runs picks how many are kept."""
    learning_rate: float = 0.01
    """LightGBM learning rate (RegMix's)."""
    subsample: float = 0.8
    """Fraction of runs each tree sees (LightGBM bagging); 1.0 is RegMix's exact setting."""
    min_data_in_leaf: int = 20
    """Fewest runs in a tree leaf (LightGBM's default, RegMix's); lower it for swarms of a few dozen runs,
    where 20 leaves a fold's trees no split at all."""
    folds: int = 5
    """k of the k-fold cross-validation that reports quality and picks the tree count."""
    early_stopping: int = 100
    """Stop adding trees when the mean fold loss has not improved for this many."""
    seed: int = 0
    """Seed of the folds and of LightGBM."""
    threads: int = 1
    """LightGBM training threads. Proxy tables are tiny, so more threads only add synchronisation
    (on a busy 2-core machine, OpenMP spin-waiting made 2 threads 90x slower)."""
    members: int = 8
    """LightGBM models the `bagged` surrogate averages, each with its own seed (seed, seed + 1, ...)."""
    all_losses: bool = False
    """Also fit every loss column (each domain's loss) with the kept surrogate, into fit/losses/<loss>/: what
    simulate's `guard` needs."""

    def validate(self) -> None:
        """Tree, fold, thread and member counts, seed, learning rate and subsample within their ranges."""
        for name in ("trees", "early_stopping", "threads", "min_data_in_leaf", "members"):
            self.require(getattr(self, name) >= 1, name, "must be >= 1")
        self.require(self.folds >= 2, "folds", "must be >= 2")
        self.require(self.seed >= 0, "seed", "must be >= 0")
        self.require(0 < self.learning_rate <= 1, "learning_rate", "must be in (0, 1]")
        self.require(0 < self.subsample <= 1, "subsample", "must be in (0, 1]")


@dataclass(frozen=True)
class SimulateConfig(Settings):
    """The `simulate:` section (or `regmix-ds simulate` flags): candidates, constraints, choice."""

    SECTION = "simulate"

    candidates: int = 1_000_000
    """Candidates drawn from Dirichlet(prior x strength), before the support filter."""
    strength_min: float = 0.1
    """Smallest Dirichlet strength (near one-domain mixtures)."""
    strength_max: float = 5.0
    """Largest Dirichlet strength (mixtures near the prior)."""
    strengths: int = 15
    """Log-spaced Dirichlet strengths in [strength_min, strength_max]; candidates split evenly."""
    top_k: int = 128
    """Best candidates averaged into the chosen mixture."""
    bootstrap: int = 20
    """Refits on resampled proxy runs that give the intervals (0: no intervals)."""
    confidence: float = 0.95
    """Nominal coverage of the intervals (their measured coverage: README, "Surrogates")."""
    interval: IntervalMethod = "normal"
    """How the refits become intervals: `normal` (answer -+ Student's t x their standard deviation; the one whose
    measured coverage came closest to the nominal), `percentile` of their answers, or `basic` (those percentiles
    mirrored around the full-data answer)."""
    proposer: Proposer = "topk"
    """`topk`: average the top_k best candidates (RegMix); `optimize`: minimise the prediction over the allowed
    region with SLSQP (smooth surrogates: linear, loglinear, gp). best.json records both answers when both apply."""
    kl_weight: float = 0.0
    """`optimize` minimises prediction + kl_weight x KL(mixture || prior): a pull towards the prior."""
    guard: dict[str, float] = field(default_factory=dict)
    """Guardrails `github=0.01,arxiv=0`: each loss's predicted value may exceed its value under guard_reference
    by at most that much (needs `fit.all_losses`)."""
    guard_reference: str = "natural"
    """The mixture guardrails compare with: `natural` (the prior simulate uses: the manifest's token shares,
    --prior, or the mean training mixture) or a mixture JSON file."""
    seed: int = 0
    """Seed of the candidates and of the bootstrap resamples."""
    max_weight: dict[str, float] = field(default_factory=dict)
    """Explicit per-domain caps (`pile_cc=0.9,github=0.2` as a flag); each replaces that domain's largest
    training weight."""
    max_epochs: float | None = None
    """With target_tokens: passes over a domain's training tokens (from the manifest) allowed."""
    target_tokens: int | None = None
    """Tokens the target model trains on (turns on the token budget; needs a manifest)."""

    def validate(self) -> None:
        """Counts and rates in range, max_epochs and target_tokens together, each max_weight cap in (0, 1],
        a KL weight only for the optimizer."""
        self.require(1 <= self.candidates <= MAX_CANDIDATES, "candidates",
                     f"must be between 1 and {MAX_CANDIDATES:,}, got {self.candidates:,} (the candidates are held "
                     "in memory at once: 8 bytes per domain each)")
        self.require(0 < self.strength_min <= self.strength_max, "strength_min",
                     "need 0 < strength_min <= strength_max")
        self.require(self.strengths >= 1, "strengths", "must be >= 1")
        self.require(1 <= self.top_k <= self.candidates, "top_k", "must be between 1 and candidates")
        self.require(self.bootstrap >= 0, "bootstrap", "must be >= 0")
        self.require(0 < self.confidence < 1, "confidence", "must be in (0, 1)")
        self.require(self.kl_weight >= 0, "kl_weight", "must be >= 0")
        self.require(self.kl_weight == 0 or self.proposer == "optimize", "kl_weight",
                     "only the optimize proposer has a KL term (give --proposer optimize)")
        self.require(self.seed >= 0, "seed", "must be >= 0")
        self.require(self.max_epochs is None or self.max_epochs > 0, "max_epochs", "must be > 0")
        self.require(self.target_tokens is None or self.target_tokens > 0, "target_tokens", "must be > 0")
        self.require((self.max_epochs is None) == (self.target_tokens is None), "target_tokens",
                     "give both max_epochs and target_tokens, or neither")
        for name, cap in self.max_weight.items():
            self.require(0 < cap <= 1, "max_weight", f"cap of {name!r} must be in (0, 1], got {cap}")


@dataclass(frozen=True)
class PlanConfig(Settings):
    """The `plan:` section (or `regmix-ds plan` flags): the devices a swarm will train on, for the budget planner.

    With no GPU numbers the planner measures this machine's device (its GPU, else its CPU).
    """

    SECTION = "plan"

    gpus: int = 1
    """GPUs (devices) the swarm trains on at once, one group of proxies each."""
    gpu_peak_tflops: float | None = None
    """Matmul peak of one GPU in the proxies' precision (TFLOP/s, e.g. measured by benchmarks/gpu_check.sh);
    unset: everything about the device is measured on this machine."""
    gpu_memory_gib: float | None = None
    """Memory of one GPU (GiB); goes with gpu_peak_tflops."""
    gpu_bandwidth_tbs: float | None = None
    """Memory bandwidth of one GPU (TB/s), for the step-time model; with gpu_peak_tflops give it or mfu."""
    mfu: float | None = None
    """Model FLOPs utilisation to plan the proxies' time at; unset: the planner's own estimate of the step."""
    target_preset: ModelPreset = "target-1b"
    """The model the chosen mixture will train."""
    target_tokens: int = 25_000_000_000
    """Tokens the target model trains on (RegMix's 1B models: 25B)."""
    target_mfu: float = 0.4
    """MFU the target run's time is planned at: a stated figure, not modelled (the GPU check measures target-1b's)."""
    vocab_size: int | None = None
    """Vocabulary to plan with; unset: the prepared manifest's, else data.vocab_size."""

    def validate(self) -> None:
        """Counts and rates in range; a stated GPU comes with its memory and with a bandwidth or an MFU."""
        self.require(self.gpus >= 1, "gpus", f"must be >= 1, got {self.gpus}")
        for name in ("gpu_peak_tflops", "gpu_memory_gib", "gpu_bandwidth_tbs"):
            value = getattr(self, name)
            self.require(value is None or value > 0, name, f"must be > 0, got {value}")
        for name in ("mfu", "target_mfu"):
            value = getattr(self, name)
            self.require(value is None or 0 < value <= 1, name, f"must be in (0, 1], got {value}")
        self.require(self.target_tokens >= 1, "target_tokens", f"must be >= 1, got {self.target_tokens}")
        self.require(self.vocab_size is None or self.vocab_size >= 1, "vocab_size", "must be >= 1")
        stated = self.gpu_peak_tflops is not None
        for name in ("gpu_memory_gib", "gpu_bandwidth_tbs"):
            self.require(stated or getattr(self, name) is None, name,
                         f"describes a GPU together with {self.name_of('gpu_peak_tflops')}; without it this machine "
                         "is measured")
        self.require(not stated or self.gpu_memory_gib is not None, "gpu_peak_tflops",
                     f"needs {self.name_of('gpu_memory_gib')} too (the GPU's memory)")
        self.require(not stated or self.gpu_bandwidth_tbs is not None or self.mfu is not None, "gpu_peak_tflops",
                     f"needs {self.name_of('gpu_bandwidth_tbs')} too (or {self.name_of('mfu')}, to plan at that MFU)")


@dataclass(frozen=True)
class ExperimentConfig(Settings):
    """A whole experiment (exp.yaml). Every relative path in it resolves against the file's directory."""

    work_dir: str
    """Where every stage writes: data/, swarm/, proxies/, results.csv, fit/, best.json (see core/layout.py)."""
    data: DataConfig
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    proxy: ProxyConfig | None = None
    """Needed by `proxy`, `run-swarm` and `slurm/proxies.sh`; the other stages run without it. Its file paths
    are resolved against the config file when it is loaded."""
    fit: FitConfig = field(default_factory=FitConfig)
    simulate: SimulateConfig = field(default_factory=SimulateConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    path: str = field(default="", metadata={"internal": True})
    """The file it was read from (set by `load`, used in error messages)."""

    @classmethod
    def load(cls, path: str | os.PathLike) -> ExperimentConfig:
        """Read and check an exp.yaml; every problem is one line naming the file and the key."""
        raw = read_mapping(path)
        if "work_dir" not in raw:
            raise RegmixError(path, "missing key work_dir")
        config = dataclasses.replace(load_section(cls, raw, path), path=str(path))
        proxy = config.proxy
        if proxy is not None:
            model_config = None if proxy.model_config is None else str(config.resolve(proxy.model_config))
            proxy = dataclasses.replace(proxy, deepspeed_config=str(config.resolve(proxy.deepspeed_config)),
                                        model_config=model_config)
        return dataclasses.replace(config, work_dir=str(config.resolve(config.work_dir)), proxy=proxy)

    @property
    def work(self) -> WorkDir:
        """The paths of everything the stages write."""
        return WorkDir(Path(self.work_dir))

    def tier_settings(self, tier: Tier) -> ProxyConfig:
        """How a tier's proxies train: the proxy section, for the transfer tier with its model, budget
        and group size from the transfer section."""
        proxy = self.require_proxy()
        if tier != "transfer":
            return proxy
        larger = self.transfer
        model_config = None if larger.model_config is None else str(self.resolve(larger.model_config))
        budget = {"train_tokens": larger.train_tokens, "steps": None} if larger.train_tokens is not None else {}
        return dataclasses.replace(proxy, preset=larger.preset, model_config=model_config, **budget,
                                   group_size=larger.group_size or proxy.group_size)

    def require_proxy(self) -> ProxyConfig:
        """The `proxy:` section, which the stages that train need."""
        if self.proxy is None:
            raise RegmixError(self.path, "no proxy: section (deepspeed_config, train_tokens, preset, ...)")
        return self.proxy

    def resolve(self, relative: str) -> Path:
        """A path from the config, taken relative to the config file's directory."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.path).parent / p

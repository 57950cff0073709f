"""Where every file of an experiment lives: the one module that spells the work-dir layout.

    <work_dir>/
      data/            manifest.json, <domain>_{train,valid}.bin/.idx, <domain>.prepared.json,
                       <domain>/{train,valid}-<k>.bin/.idx, part-<k>.json (shard_by: file: one per input file or chunk)
      swarm/           n<i>.json (i = 1..N over every round), swarm.csv, settings.json
      proxies/         n<i>/ (a run directory each), group-<i>.log
      results.csv      one row per swarm member (collect)
      transfer/        the transfer check's tier: swarm/, proxies/, results.csv, transfer.json
      oracle/          a benchmark's oracle search, the same layout
      fit/             model.json, model.txt, fit_report.json, cv_predictions.csv,
                       candidates/<regressor>/ (regressor auto), losses/<loss>/ (all_losses): fit directories
      best.json        the chosen mixture (simulate)
      verify/          <name>-<hash>.json and <name>-<hash>/ (a run directory each)
      report/          summary.md, verify.json, *.png
      megatron/        data_args.txt, per_split_data_args.json (export --format megatron)

    a run directory:   run.json, metrics.jsonl, checkpoints/, hf/, result.json (written last),
                       failed.json (a failed attempt), proxy.log (when a local runner started it)

Every other module asks these classes for paths instead of spelling them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from regmix_ds.core.files import entries

MIXTURE_FILE = re.compile(r"n(\d+)\.json")


@dataclass(frozen=True)
class RunDir:
    """One training run's directory (a proxy, a verification run, the target run)."""

    path: Path

    @property
    def result(self) -> Path:
        """Written last, atomically: its presence means the run is complete."""
        return self.path / "result.json"

    @property
    def failed(self) -> Path:
        """Left by an attempt that ended in an error, for `collect`; the next attempt removes it."""
        return self.path / "failed.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def run_record(self) -> Path:
        return self.path / "run.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def hf(self) -> Path:
        return self.path / "hf"

    @property
    def log(self) -> Path:
        """Output of a run started by a local runner (`run-swarm`, `verify`)."""
        return self.path / "proxy.log"

    @property
    def owner(self) -> Path:
        """Locked (flock) by the process training the run, so no second one trains it at once."""
        return self.path / ".owner.lock"

    def is_done(self) -> bool:
        """Whether the run finished: its result.json exists."""
        return self.result.is_file()


@dataclass(frozen=True)
class DataDir:
    """The prepared corpus: token shards, per-domain stamps and the manifest."""

    path: Path

    @property
    def manifest(self) -> Path:
        return self.path / "manifest.json"

    def prefix(self, name: str, split: str) -> Path:
        """The Megatron prefix (`<prefix>.bin` + `<prefix>.idx`) of one split of one domain."""
        return self.path / f"{name}_{split}"

    @property
    def lock(self) -> Path:
        """Held (flock) by the process writing the directory's shards, stamps and manifest: one at a time."""
        return self.path / ".prepare.lock"

    def stamp(self, name: str) -> Path:
        """What a domain's shards were built from (`prepare` skips a domain whose stamp matches)."""
        return self.path / f"{name}.prepared.json"

    def part(self, name: str, part: int, split: str) -> Path:
        """The Megatron prefix of one split of a source's `part`-th per-file shard (one tokenize task's output)."""
        return self.path / name / f"{split}-{part:05d}"

    def part_stamp(self, name: str, part: int) -> Path:
        """What that task's shards were built from, written after them: present and matching means done."""
        return self.path / name / f"part-{part:05d}.json"


@dataclass(frozen=True)
class MegatronDir:
    """What `regmix-ds export --format megatron --out DIR` writes for Megatron-LM."""

    path: Path

    @property
    def data_args(self) -> Path:
        """The `--data-path` list as a file, for `--data-args-path`."""
        return self.path / "data_args.txt"

    @property
    def per_split_data_args(self) -> Path:
        """Train and valid blends as JSON, for `--per-split-data-args-path`."""
        return self.path / "per_split_data_args.json"


@dataclass(frozen=True)
class SwarmDir:
    """The sampled swarm: one mixture file per proxy, the same table in RegMix's layout, the settings."""

    path: Path

    def mixture(self, index: int) -> Path:
        """Swarm member `index`'s mixture (RegMix numbers its proxies from 1)."""
        return self.path / f"n{index}.json"

    def indices(self) -> list[int]:
        """The indices of the `n<i>.json` files, ascending (empty if there is no swarm)."""
        return sorted(int(m.group(1)) for p in entries(self.path) if (m := MIXTURE_FILE.fullmatch(p.name)))

    @property
    def table(self) -> Path:
        """`index` then one column per domain (RegMix's `train_mixture_*.csv` layout)."""
        return self.path / "swarm.csv"

    @property
    def settings(self) -> Path:
        return self.path / "settings.json"


@dataclass(frozen=True)
class FitDir:
    """The output of `regmix-ds fit`."""

    path: Path

    @property
    def sidecar(self) -> Path:
        return self.path / "model.json"

    @property
    def booster(self) -> Path:
        return self.path / "model.txt"

    @property
    def report(self) -> Path:
        return self.path / "fit_report.json"

    @property
    def cv_predictions(self) -> Path:
        return self.path / "cv_predictions.csv"

    def candidate(self, regressor: str) -> FitDir:
        """Where `fit --regressor auto` keeps each surrogate it tried (a fit directory of its own)."""
        return FitDir(self.path / "candidates" / regressor)

    def loss(self, name: str) -> FitDir:
        """Where `fit.all_losses` keeps the model of loss `name` (for simulate's guardrails)."""
        return FitDir(self.path / "losses" / name)


Tier = Literal["swarm", "transfer", "oracle"]
"""A set of proxies trained alike: the swarm; the transfer check's larger proxies (`transfer/`);
the oracle search of a benchmark (`oracle/`). Each has the swarm's layout under its own root."""


@dataclass(frozen=True)
class TierDir:
    """A tier's mixtures, its run directories and its results table."""

    root: Path

    @property
    def swarm(self) -> SwarmDir:
        return SwarmDir(self.root / "swarm")

    def mixture(self, index: int) -> Path:
        """Member `index`'s mixture."""
        return self.swarm.mixture(index)

    @property
    def proxies(self) -> Path:
        return self.root / "proxies"

    def proxy(self, index: int) -> RunDir:
        """The run directory of member `index`: proxies/n<index>."""
        return RunDir(self.proxies / f"n{index}")

    def group_log(self, first: int) -> Path:
        """Output of the local job that trains the group starting at index `first`."""
        return self.proxies / f"group-{first}.log"

    @property
    def results(self) -> Path:
        return self.root / "results.csv"


@dataclass(frozen=True)
class WorkDir(TierDir):
    """An experiment's `work_dir`: the data, the swarm tier at its root, the other tiers under it,
    and what the later stages write."""

    @property
    def data(self) -> DataDir:
        return DataDir(self.root / "data")

    @property
    def manifest(self) -> Path:
        return self.data.manifest

    def tier(self, name: Tier) -> TierDir:
        """The tier `name`: the swarm's files are at the root, the others in a directory of their name."""
        return self if name == "swarm" else TierDir(self.root / name)

    @property
    def transfer_report(self) -> Path:
        """What `regmix-ds transfer` concluded: the rank agreement between the swarm's proxies and the larger ones."""
        return self.root / "transfer" / "transfer.json"

    @property
    def oracle_result(self) -> Path:
        """The oracle search's best measured mixture and loss (a benchmark's answer key)."""
        return self.root / "oracle" / "oracle.json"

    @property
    def fit(self) -> FitDir:
        return FitDir(self.root / "fit")

    @property
    def best(self) -> Path:
        return self.root / "best.json"

    @property
    def verify(self) -> Path:
        return self.root / "verify"

    def verify_run(self, name: str, mixture_hash: str) -> RunDir:
        """A verification run, keyed by its mixture's content: a new best.json gets a new run."""
        return RunDir(self.verify / f"{name}-{mixture_hash}")

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def megatron(self) -> MegatronDir:
        return MegatronDir(self.root / "megatron")

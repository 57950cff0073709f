"""The bad-input table: every input a user hands us, a typical mistake in it, and the promise
that it costs one clear line: exit 2, one stderr line naming the file (or flag) and the problem,
no traceback, and no output file created or changed. docs/bad-input.md shows the same table.

Each case builds its bad input in its own tmp directory and runs the command line's own entry
point (`regmix-ds ...`, or train.py's `main`) with that argv, in this interpreter: a fresh one per
case would cost a second of imports each (the entry points themselves run as real processes in
test_entry_points.py). None trains anything: bad input must fail before training starts, and a
command that got as far as the engine's exit would end the case with its code, not end pytest.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from regmix_ds.commands import train as train_command
from regmix_ds.commands.main import main
from regmix_ds.core.dsconfig import with_mixture
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.data.indexed import IndexedDataset
from regmix_ds.train import engine

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "bad-input.md"
ZERO0 = ROOT / "ds_configs" / "zero0.json"
REGMIX_TRAIN = ("train_mixture_1m.csv", "train_pile_loss_1m.csv")


# ---- what a case may use ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted_model(regmix_data, tmp_path_factory) -> Path:
    """A small LightGBM fit on copies of RegMix's training CSVs (so a case may change its inputs)."""
    from regmix_ds.core.config import FitConfig
    from regmix_ds.regress.fit import fit
    from regmix_ds.regress.tables import Target, read_regmix_tables

    base = tmp_path_factory.mktemp("fitted")
    inputs = [shutil.copy(regmix_data / "data" / name, base / name) for name in REGMIX_TRAIN]
    settings = FitConfig(target="pile_cc", trees=20, early_stopping=5, folds=3)
    fit(read_regmix_tables(*inputs), Target.parse("pile_cc"), settings, base / "fit")
    return base / "fit"


class Bench:
    """One case's workspace: its own tmp directory, and the shared fixtures it asks for (lazily)."""

    def __init__(self, request: pytest.FixtureRequest, tmp: Path):
        self.request, self.tmp = request, tmp

    @functools.cached_property
    def manifest(self) -> Path:
        return self.request.getfixturevalue("tiny_manifest")

    @functools.cached_property
    def experiment(self) -> Path:
        """exp.yaml of a prepared copy of the tiny corpus with a 4-mixture swarm and a proxy: section."""
        return self.request.getfixturevalue("tiny_experiment")(n=4)

    @property
    def work_dir(self) -> Path:
        return self.experiment.parent / "work"

    @functools.cached_property
    def model(self) -> Path:
        """A private copy of the fitted model directory and of the training CSVs it records."""
        model = Path(shutil.copytree(self.request.getfixturevalue("fitted_model"), self.tmp / "fit"))
        sidecar = json.loads((model / "model.json").read_text())
        for entry in sidecar["inputs"].values():
            entry["path"] = shutil.copy(entry["path"], self.tmp)
        (model / "model.json").write_text(json.dumps(sidecar))
        return model

    @property
    def regmix(self) -> Path:
        return self.request.getfixturevalue("regmix_data") / "data"

    def full_disk(self) -> Path:
        """A directory on a 1 MiB file system filled to its last byte."""
        disk = self._mounted("full", "size=1m")
        with contextlib.suppress(OSError), open(disk / "filler", "wb") as handle:
            while handle.write(b"\0" * 4096):
                handle.flush()
        return disk

    def read_only_disk(self) -> Path:
        """A directory on a read-only file system."""
        return self._mounted("read-only", "ro")

    def _mounted(self, name: str, options: str) -> Path:
        """A tmpfs mounted for this case (root only; unmounted when the case ends)."""
        where = self.tmp / name
        where.mkdir()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                                 timeout=60)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): needs root")
        self.request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(where)], check=True, timeout=60))
        return where

    def write(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def json(self, name: str, data) -> Path:
        return self.write(name, json.dumps(data))

    def prior(self) -> dict[str, float]:
        return Manifest.load(self.manifest).token_prior()

    def mixture(self, **weights: float) -> Path:
        """The token prior with `weights` replacing (or adding) entries, unvalidated."""
        return self.json("mixture.json", {"weights": {**self.prior(), **weights}})

    def good_mixture(self) -> Path:
        path = self.tmp / "good.json"
        Mixture.from_weights(self.prior(), renormalize=True).save(path)
        return path

    def ds_config(self, **changes) -> Path:
        """ds_configs/zero0.json with top-level `changes` (None deletes a key)."""
        settings = {**json.loads(ZERO0.read_text()), **changes}
        return self.json("ds.json", {k: v for k, v in settings.items() if v is not None})

    def train(self, manifest=None, mixture: object = "good", ds=None, *flags) -> list:
        """`train.py` on the tiny corpus; every input can be swapped for a bad one."""
        mixture = self.good_mixture() if mixture == "good" else mixture
        return ["train.py", "--manifest", manifest or self.manifest, "--deepspeed_config", ds or ZERO0,
                *(["--mixture", mixture] if mixture else []), "--preset", "tiny", "--seq-len", 32, "--steps", 4,
                "--out", self.tmp / "run", *flags]

    def data_copy(self) -> Manifest:
        """A private copy of the prepared shards, manifest and tokenizer (to damage)."""
        shutil.copytree(self.manifest.parent, self.tmp / "data")
        shutil.copytree(self.manifest.parent.parent / "tokenizer", self.tmp / "tokenizer")  # where the manifest says
        return Manifest.load(self.tmp / "data" / "manifest.json")

    def edited_manifest(self, edit: Callable[[dict], None]) -> Path:
        data = json.loads(self.manifest.read_text())
        edit(data)
        return self.json("manifest.json", data)

    def edited_experiment(self, edit: Callable[[dict], None]) -> Path:
        config = yaml.safe_load(self.experiment.read_text())
        edit(config)
        self.experiment.write_text(yaml.safe_dump(config, sort_keys=False))
        return self.experiment

    def csv_copy(self, name: str, edit: Callable[[list[str]], list[str]]) -> Path:
        """A copy of one of RegMix's CSVs with its lines edited."""
        lines = (self.regmix / name).read_text().splitlines()
        return self.write(name, "\n".join(edit(lines)) + "\n")

    def results_csv(self, edit: Callable[[list[list[str]]], None] = lambda rows: None) -> Path:
        """A results.csv in collect's layout (3 done runs, 6 domains), with its cells edited."""
        domains = list(self.prior())
        rows = [["index", "status", *(f"w:{d}" for d in domains), "loss:target", "tokens", "wall_seconds"]]
        for i in range(1, 4):
            weights = [repr(1.0 / len(domains))] * len(domains)
            rows.append([str(i), "done", *weights, repr(3.0 + i / 10), "512", "1.5"])
        edit(rows)
        return self.write("results.csv", "\n".join(",".join(row) for row in rows) + "\n")


@dataclass(frozen=True)
class BadInput:
    """One row of the table: the argv (first word `regmix-ds` or `train.py`), the output
    locations that must stay untouched, and the text the error line must contain."""

    argv: list
    watch: list[Path]
    message: str
    while_writing: bool = False
    """The problem shows only when the output is written (a disk full): the stage's own progress
    lines may come first, and the error is the last line."""


CASES: dict[str, Callable[[Bench], BadInput]] = {}


def case(name: str):
    def register(build: Callable[[Bench], BadInput]):
        assert name not in CASES
        CASES[name] = build
        return build
    return register


def rd(*args) -> list:
    return ["regmix-ds", *args]


# ---- experiment config (exp.yaml) ---------------------------------------------------------------


@case("exp-missing")
def _(b: Bench) -> BadInput:
    path = b.tmp / "exp.yaml"
    return BadInput(rd("swarm", "--config", path), [b.tmp], f"{path}: file not found")


@case("exp-not-yaml")
def _(b: Bench) -> BadInput:
    path = b.write("exp.yaml", "work_dir: work\ndata: [news\n")
    return BadInput(rd("swarm", "--config", path), [b.tmp / "work"], f"{path}: not valid YAML")


@case("exp-python-tag")
def _(b: Bench) -> BadInput:
    path = b.write("exp.yaml", f"work_dir: !!python/object/apply:os.system ['touch {b.tmp / 'pwned'}']\n")
    return BadInput(rd("swarm", "--config", path), [b.tmp], f"{path}: not valid YAML")


@case("exp-no-work-dir")
def _(b: Bench) -> BadInput:
    path = b.write("exp.yaml", "data:\n  domains:\n    news: {paths: [news.jsonl]}\n")
    return BadInput(rd("prepare", "--config", path), [b.tmp], f"{path}: missing key work_dir")


@case("exp-unknown-key")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["swarm"].update(seeds=3))
    return BadInput(rd("swarm", "--config", path), [b.work_dir], f"{path}: swarm: unknown key(s) seeds; known: n, seed")


@case("exp-wrong-type")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["swarm"].update(n="four"))
    return BadInput(rd("swarm", "--config", path), [b.work_dir], f"{path}: swarm.n: expected int, got 'four'")


@case("exp-bad-value")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["proxy"].update(seq_len=0))
    return BadInput(rd("proxy", "--config", path, "--index", 1), [b.work_dir], f"{path}: proxy.seq_len: must be >= 1")


@case("exp-vocab-too-small")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"].update(vocab_size=0))
    return BadInput(rd("prepare", "--config", path, "--train-tokenizer"), [b.work_dir],
                    f"{path}: data.vocab_size: must be >= 257 (the 256 bytes of the byte-level alphabet")


@case("exp-swarm-too-large")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["swarm"].update(n=10**9))
    return BadInput(rd("swarm", "--config", path), [b.work_dir],
                    f"{path}: swarm.n: must be between 1 and 100,000, got 1,000,000,000")


@case("exp-unsafe-domain")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"]["domains"].update({"../x": c["data"]["domains"]["news"]}))
    return BadInput(rd("prepare", "--config", path), [b.work_dir], f"{path}: data.domains: invalid domain name '../x'")


@case("exp-no-proxy-section")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c.pop("proxy"))
    return BadInput(rd("run-swarm", "--config", path), [b.work_dir], f"{path}: no proxy: section")


# ---- mixture JSON --------------------------------------------------------------------------------


@case("mixture-negative")
def _(b: Bench) -> BadInput:
    path = b.mixture(news=-0.1)
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: weight of 'news' is negative: -0.1")


@case("mixture-nan")
def _(b: Bench) -> BadInput:
    path = b.mixture(news=float("nan"))
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: NaN is not a number JSON allows")


@case("mixture-all-zero")
def _(b: Bench) -> BadInput:
    path = b.json("mixture.json", {"weights": dict.fromkeys(b.prior(), 0)})
    out = b.tmp / "run"
    return BadInput(rd("proxy", "--config", b.experiment, "--mixture", path, "--out", out), [out, b.work_dir],
                    f"{path}: all weights are zero")


@case("mixture-sum-not-one")
def _(b: Bench) -> BadInput:
    path = b.json("mixture.json", {"weights": dict.fromkeys(b.prior(), 0.1)})
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: weights sum to 0.6, not 1")


@case("mixture-unknown-domain")
def _(b: Bench) -> BadInput:
    weights = {**{k: v * 0.5 for k, v in b.prior().items()}, "poetry": 0.5}
    path = b.json("mixture.json", {"weights": weights})
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: mixture names unknown domain(s) poetry")


@case("mixture-unsafe-name")
def _(b: Bench) -> BadInput:
    path = b.json("mixture.json", {"weights": {"../news": 1.0}})
    return BadInput(rd("export", "--mixture", path, "--manifest", b.manifest), [b.tmp],
                    f"{path}: invalid domain name '../news'")


@case("mixture-not-json")
def _(b: Bench) -> BadInput:
    path = b.write("mixture.json", "news: 0.5\ncode: 0.5\n")
    return BadInput(rd("export", "--mixture", path, "--manifest", b.manifest), [b.tmp], f"{path}: not valid JSON")


# ---- DeepSpeed config and its "regmix" block ------------------------------------------------------


@case("ds-regmix-disagrees")
def _(b: Bench) -> BadInput:
    other = Mixture.from_weights({**b.prior(), "news": 0.9}, renormalize=True)
    ds = b.json("ds.json", with_mixture(json.loads(ZERO0.read_text()), other))
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f'--mixture: {b.tmp / "good.json"} (hash')


@case("ds-regmix-hash-edited")
def _(b: Bench) -> BadInput:
    block = with_mixture(json.loads(ZERO0.read_text()), Mixture.load(b.good_mixture()))
    block["regmix"]["mixture"]["weights"]["news"] += 0.01
    block["regmix"]["mixture"]["weights"]["code"] -= 0.01
    ds = b.json("ds.json", block)
    return BadInput(b.train(ds=ds, mixture=None), [b.tmp / "run"], f'{ds}: "regmix.mixture.hash" is')


@case("ds-no-mixture-anywhere")
def _(b: Bench) -> BadInput:
    return BadInput(b.train(mixture=None), [b.tmp / "run"], f'--mixture: required: {ZERO0} has no "regmix" block')


@case("ds-scheduler-block")
def _(b: Bench) -> BadInput:
    ds = b.ds_config(scheduler={"type": "WarmupLR", "params": {"warmup_num_steps": 10}})
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f'{ds}: remove the "scheduler" block')


@case("ds-batch-arithmetic")
def _(b: Bench) -> BadInput:
    ds = b.ds_config(train_batch_size=6, gradient_accumulation_steps=2)
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f"{ds}: train_batch_size 6 != train_micro_batch_size_per_gpu 2 x "
                    "gradient_accumulation_steps 2 x world size 1 (= 4)")


@case("ds-no-optimizer")
def _(b: Bench) -> BadInput:
    ds = b.ds_config(optimizer=None)
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f'{ds}: needs an "optimizer" block of type AdamW or Adam')


# ---- manifest ------------------------------------------------------------------------------------


@case("manifest-missing")
def _(b: Bench) -> BadInput:
    path = b.tmp / "manifest.json"
    return BadInput(b.train(manifest=path), [b.tmp / "run"], f"{path}: file not found")


@case("manifest-wrong-format")
def _(b: Bench) -> BadInput:
    path = b.edited_manifest(lambda m: m.update(format="regmix-ds/manifest-0"))
    return BadInput(b.train(manifest=path), [b.tmp / "run"], f"{path}: not a regmix-ds manifest")


@case("manifest-missing-field")
def _(b: Bench) -> BadInput:
    path = b.edited_manifest(lambda m: m["domains"]["news"].pop("train"))
    return BadInput(b.train(manifest=path), [b.tmp / "run"], f"{path}: malformed manifest (KeyError: 'train')")


# ---- token shards ----------------------------------------------------------------------------------


def shard_case(b: Bench, split: str, domain: str, suffix: str, damage: Callable[[Path], None],
               message: str) -> BadInput:
    """train.py on a private copy of the shards whose `split` `domain` `suffix` file was damaged;
    `message` follows the damaged file's path in the expected error."""
    manifest = b.data_copy()
    path = getattr(manifest, split)[domain].prefix.with_suffix(suffix)
    damage(path)
    return BadInput(b.train(manifest=manifest.path), [b.tmp / "run", b.tmp / "data"], f"{path}: {message}")


def overwrite(start: int, data: bytes) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        raw[start : start + len(data)] = data
        path.write_bytes(bytes(raw))
    return damage


@case("shard-bin-truncated")
def _(b: Bench) -> BadInput:
    return shard_case(b, "train", "code", ".bin", lambda p: p.write_bytes(p.read_bytes()[:-100]), "truncated")


@case("shard-idx-bad-magic")
def _(b: Bench) -> BadInput:
    return shard_case(b, "valid", "target", ".idx", overwrite(0, b"NOTANIDX\x00"),
                      "not a Megatron index (magic b'NOTANIDX\\x00'")


@case("shard-idx-sizes-corrupt")
def _(b: Bench) -> BadInput:
    # Bytes 34-37 hold the first document's length.
    return shard_case(b, "train", "news", ".idx", overwrite(34, (10**6).to_bytes(4, "little")),
                      "inconsistent index: sequence pointers do not follow the sequence lengths")


@case("shard-bin-missing")
def _(b: Bench) -> BadInput:
    return shard_case(b, "train", "chat", ".bin", Path.unlink, "data file not found (its .idx exists)")


@case("shard-token-outside-vocab")
def _(b: Bench) -> BadInput:
    # Same size, every uint16 token 65535; the tokenizer of the tiny corpus has 512 tokens.
    return shard_case(b, "valid", "code", ".bin", lambda p: p.write_bytes(b"\xff" * p.stat().st_size),
                      "token id 65535 is outside the vocabulary [0, 512)")


# ---- results.csv and RegMix's CSVs -----------------------------------------------------------------


def fit_command(b: Bench, *inputs) -> list:
    return rd("fit", *inputs, "--target", "pile_cc", "--trees", 5, "--out", b.tmp / "fit")


@case("results-no-status")
def _(b: Bench) -> BadInput:
    path = b.results_csv(lambda rows: [row.pop(1) for row in rows])
    return BadInput(rd("fit", "--results", path, "--target", "target", "--out", b.tmp / "fit"), [b.tmp / "fit"],
                    f"{path}: no 'status' column")


@case("results-not-a-number")
def _(b: Bench) -> BadInput:
    path = b.results_csv(lambda rows: rows[2].__setitem__(-3, "abc"))
    return BadInput(rd("fit", "--results", path, "--target", "target", "--out", b.tmp / "fit"), [b.tmp / "fit"],
                    f"{path}: index 2, column 'loss:target': not a number: 'abc'")


@case("results-nan-loss")
def _(b: Bench) -> BadInput:
    path = b.results_csv(lambda rows: rows[3].__setitem__(-3, "nan"))
    return BadInput(rd("fit", "--results", path, "--target", "target", "--out", b.tmp / "fit"), [b.tmp / "fit"],
                    f"{path}: loss 'loss:target' is missing or not finite at index 3")


@case("regmix-duplicate-header")
def _(b: Bench) -> BadInput:
    def header_twice(lines):
        return [lines[0].replace("train_the_pile_github", "train_the_pile_arxiv"), *lines[1:]]

    mixtures = b.csv_copy(REGMIX_TRAIN[0], header_twice)
    return BadInput(fit_command(b, "--mixtures", mixtures, "--losses", b.regmix / REGMIX_TRAIN[1]), [b.tmp / "fit"],
                    f"{mixtures}: duplicate column names")


@case("regmix-ragged-row")
def _(b: Bench) -> BadInput:
    losses = b.csv_copy(REGMIX_TRAIN[1], lambda lines: [*lines[:2], "2,4.5", *lines[3:]])
    return BadInput(fit_command(b, "--mixtures", b.regmix / REGMIX_TRAIN[0], "--losses", losses), [b.tmp / "fit"],
                    f"{losses}: line 3 has 2 cells, the header has")


@case("regmix-unmatched-index")
def _(b: Bench) -> BadInput:
    losses = b.csv_copy(REGMIX_TRAIN[1], lambda lines: [lines[0], *lines[2:]])
    return BadInput(fit_command(b, "--mixtures", b.regmix / REGMIX_TRAIN[0], "--losses", losses), [b.tmp / "fit"],
                    f"{losses}: index 1 of {b.regmix / REGMIX_TRAIN[0]} has no loss row")


@case("regmix-negative-weight")
def _(b: Bench) -> BadInput:
    mixtures = b.csv_copy(REGMIX_TRAIN[0],
                          lambda lines: [*lines[:5], lines[5].replace(",0.0,", ",-0.1,", 1), *lines[6:]])
    return BadInput(fit_command(b, "--mixtures", mixtures, "--losses", b.regmix / REGMIX_TRAIN[1]), [b.tmp / "fit"],
                    f"{mixtures}: index 5: negative weight")


# ---- fitted model files ----------------------------------------------------------------------------


def predict_command(b: Bench, model: Path) -> tuple[list, Path]:
    out = b.tmp / "predicted.csv"
    return rd("predict", "--model", model, "--mixtures", b.regmix / "test_mixture_1m.csv", "--out", out), out


@case("model-txt-corrupt")
def _(b: Bench) -> BadInput:
    booster = b.model / "model.txt"
    booster.write_text(booster.read_text().replace("tree_sizes=", "tree_sizes=9", 1))
    argv, out = predict_command(b, b.model)
    return BadInput(argv, [out, b.model], f"{booster}: does not match model.json (changed or corrupt); fit again")


@case("model-json-missing")
def _(b: Bench) -> BadInput:
    (b.model / "model.json").unlink()
    argv, out = predict_command(b, b.model)
    return BadInput(argv, [out, b.model], f"{b.model / 'model.json'}: file not found")


@case("model-json-domains-edited")
def _(b: Bench) -> BadInput:
    sidecar = json.loads((b.model / "model.json").read_text())
    sidecar["domains"] = sidecar["domains"][:-1]
    (b.model / "model.json").write_text(json.dumps(sidecar))
    argv, out = predict_command(b, b.model)
    return BadInput(argv, [out, b.model],
                    f"{b.model / 'model.txt'}: does not match model.json (features or tree count)")


@case("model-inputs-changed")
def _(b: Bench) -> BadInput:
    losses = Path(json.loads((b.model / "model.json").read_text())["inputs"]["losses"]["path"])
    losses.write_text(losses.read_text().replace("5", "6", 1))  # edited after the fit
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--candidates", 1000, "--top-k", 10),
                    [out, b.model], f"{losses}: changed since the fit in {b.model} (losses); fit again")


@case("model-dir-missing")
def _(b: Bench) -> BadInput:
    argv, out = predict_command(b, b.tmp / "nofit")
    return BadInput(argv, [out], f"{b.tmp / 'nofit'}: not a directory (expected the output of regmix-ds fit)")


# ---- proxy results ---------------------------------------------------------------------------------


@case("result-json-torn")
def _(b: Bench) -> BadInput:
    done = run(rd("collect", "--config", b.experiment))
    assert done.returncode == 0, done.stderr
    result = b.work_dir / "proxies" / "n2" / "result.json"
    result.parent.mkdir(parents=True)
    result.write_text('{"valid_loss": {"news": 3.1')
    return BadInput(rd("collect", "--config", b.experiment), [b.work_dir / "results.csv"], f"{result}: not valid JSON")


@case("results-no-done-runs")
def _(b: Bench) -> BadInput:
    path = b.results_csv(lambda rows: [row.__setitem__(1, "failed") for row in rows[1:]])
    return BadInput(rd("fit", "--results", path, "--target", "target", "--out", b.tmp / "fit"), [b.tmp / "fit"],
                    f"{path}: no run has status 'done'")


@case("model-cv-predictions-cut")
def _(b: Bench) -> BadInput:
    predictions = b.model / "cv_predictions.csv"
    predictions.write_text("".join(predictions.read_text().splitlines(keepends=True)[:10]))
    out = b.tmp / "report"
    return BadInput(rd("report", "--model", b.model, "--out", out), [out, b.model],
                    f"{predictions}: does not match the training runs; fit again")


@case("mixture-other-domains-for-report")
def _(b: Bench) -> BadInput:
    best = b.json("best.json", {"weights": {"news": 0.5, "code": 0.5}})
    out = b.tmp / "report"
    return BadInput(rd("report", "--model", b.model, "--best", best, "--out", out), [out, b.model],
                    f"{best}: mixture names unknown domain(s) code, news")


@case("mixture-lacks-a-domain-for-export")
def _(b: Bench) -> BadInput:
    weights = dict(b.prior())
    weights.pop("news")
    path = b.json("mixture.json", {"weights": {k: v / sum(weights.values()) for k, v in weights.items()}})
    return BadInput(rd("export", "--mixture", path, "--manifest", b.manifest), [b.tmp],
                    f"{path}: mixture lacks domain(s) news")


@case("manifest-no-domains")
def _(b: Bench) -> BadInput:
    path = b.edited_manifest(lambda m: m.update(domains={}, targets={}))
    return BadInput(b.train(manifest=path), [b.tmp / "run"], f"{path}: manifest lists no domains")


@case("exp-mixed-input-kinds")
def _(b: Bench) -> BadInput:
    text = b.write("extra.txt", "one document\n")
    path = b.edited_experiment(lambda c: c["data"]["domains"]["news"]["paths"].append(str(text)))
    return BadInput(rd("prepare", "--config", path), [b.work_dir],
                    "data.domains.news.paths: mixes input kinds (json, text); use one kind per domain")


@case("exp-tokenizer-damaged")
def _(b: Bench) -> BadInput:
    tokenizer = b.tmp / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "tokenizer.json").write_text("{}")
    (tokenizer / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    path = b.edited_experiment(lambda c: c["data"].update(tokenizer=str(tokenizer)))
    return BadInput(rd("prepare", "--config", path), [b.work_dir],
                    f"data.tokenizer: cannot load tokenizer '{tokenizer}'")


@case("flag-out-config-alone")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--out-config", b.tmp / "ds.json"),
                    [out, b.tmp / "ds.json", b.model],
                    "--out-config: give --deepspeed-config and --out-config together")


@case("flag-candidates-too-many")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--candidates", 10**9), [out, b.model],
                    "--candidates: must be between 1 and 50,000,000, got 1,000,000,000")


@case("flag-token-budget-without-manifest")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--target-tokens", 1000, "--max-epochs", 2),
                    [out, b.model], "--target-tokens: token budgets need --manifest")


@case("flag-guard-without-loss-models")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--guard", "github=0.01"), [out, b.model],
                    f"--guard: no model of loss github in {b.model} (fit with --all-losses)")


@case("flag-guard-unmeetable")
def _(b: Bench) -> BadInput:
    model = b.tmp / "guarded"
    inputs = [b.regmix / name for name in REGMIX_TRAIN]
    assert main(["fit", "--mixtures", str(inputs[0]), "--losses", str(inputs[1]), "--target", "pile_cc",
                 "--regressor", "linear", "--all-losses", "--out", str(model)]) == 0
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", model, "--out", out, "--candidates", 20_000, "--guard", "github=-5"),
                    [out, model], "--guard: only 0 of")


@case("flag-proposer-needs-smooth-surrogate")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--proposer", "optimize"), [out, b.model],
                    "--proposer: optimize needs a smooth surrogate (linear, loglinear, gp)")


@case("flag-fit-two-inputs")
def _(b: Bench) -> BadInput:
    results = b.results_csv()
    return BadInput(fit_command(b, "--results", results, "--mixtures", b.regmix / REGMIX_TRAIN[0]), [b.tmp / "fit"],
                    "--results: give exactly one input: --results, --mixtures with --losses, or --config")


@case("flag-proxy-mixture-without-out")
def _(b: Bench) -> BadInput:
    return BadInput(rd("proxy", "--config", b.experiment, "--mixture", b.good_mixture()), [b.work_dir],
                    "--mixture: --mixture and --out go together")


@case("flag-plan-gpus")
def _(b: Bench) -> BadInput:
    return BadInput(rd("plan", "--config", b.experiment, "--gpus", 0), [b.work_dir], "--gpus: must be >= 1, got 0")


@case("flag-plan-gpu-without-memory")
def _(b: Bench) -> BadInput:
    return BadInput(rd("plan", "--config", b.experiment, "--gpu-peak-tflops", 700), [b.work_dir],
                    "--gpu-peak-tflops: needs plan.gpu_memory_gib too (the GPU's memory)")


@case("exp-plan-mfu")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c.update(plan={"mfu": 1.5}))
    return BadInput(rd("plan", "--config", path), [b.work_dir], f"{path}: plan.mfu: must be in (0, 1], got 1.5")


# ---- existing shards and per-file tokenize tasks (prepare) -------------------------------------------


def registered_copy(b: Bench, damage: Callable[[Path], None] | None = None) -> Path:
    """exp.yaml whose news domain is a copy of the tiny corpus's news train shard, given as a Megatron
    prefix (its .idx or .bin damaged by `damage`)."""
    prefix = b.tmp / "shards" / "news_text_document"
    prefix.parent.mkdir()
    for suffix in (".bin", ".idx"):
        shutil.copy(Manifest.load(b.manifest).train["news"].prefix.with_suffix(suffix), prefix.with_suffix(suffix))
    if damage:
        damage(prefix)
    return b.edited_experiment(lambda c: c["data"]["domains"].update(news={"prefixes": [str(prefix)]}))


@case("exp-paths-and-prefixes")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"]["domains"]["news"].update(prefixes=["shards/news_*"]))
    return BadInput(rd("prepare", "--config", path), [b.work_dir],
                    f"{path}: data.domains.news.paths: give paths (raw text) or prefixes (existing Megatron shards)")


@case("exp-chunk-bytes-per-domain")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"].update(chunk_bytes=10**9))
    return BadInput(rd("prepare", "--config", path), [b.work_dir],
                    f"{path}: data.chunk_bytes: splits files into tasks, which needs shard_by: file")


@case("exp-train-tokenizer-with-shards")
def _(b: Bench) -> BadInput:
    path = registered_copy(b)
    return BadInput(rd("prepare", "--config", path, "--train-tokenizer"), [b.work_dir, b.tmp / "shards"],
                    f"{path}: data.domains.news.prefixes: existing shards need the tokenizer they were made with")


@case("shard-glob-matches-nothing")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"]["domains"].update(news={"prefixes": [str(b.tmp / "pile" / "*")]}))
    return BadInput(rd("prepare", "--config", path), [b.work_dir],
                    f"{path}: data.domains.news.prefixes: no Megatron shards match")


@case("shard-multimodal-index")
def _(b: Bench) -> BadInput:
    def add_modes(prefix: Path) -> None:
        idx = prefix.with_suffix(".idx")
        idx.write_bytes(idx.read_bytes() + bytes(len(IndexedDataset(prefix))))

    path = registered_copy(b, add_modes)
    return BadInput(rd("prepare", "--config", path), [b.work_dir, b.tmp / "shards"],
                    "news_text_document.idx: a Megatron multimodal index")


@case("shard-from-another-tokenizer")
def _(b: Bench) -> BadInput:
    def other_ids(prefix: Path) -> None:
        data = prefix.with_suffix(".bin")
        data.write_bytes(b"\xff" * data.stat().st_size)

    path = registered_copy(b, other_ids)
    return BadInput(rd("prepare", "--config", path), [b.work_dir, b.tmp / "shards"],
                    "news_text_document.bin: token id 65535 (token 0) is outside the vocabulary [0, 512) of "
                    "data.tokenizer")


@case("flag-task-per-domain")
def _(b: Bench) -> BadInput:
    return BadInput(rd("prepare", "--config", b.experiment, "--task", 1), [b.work_dir],
                    "--task: tokenize tasks need data.shard_by: file")


@case("flag-task-unknown")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"].update(shard_by="file"))
    return BadInput(rd("prepare", "--config", path, "--task", 99), [b.work_dir], "--task: no task 99 (tasks: 1-7)")


# ---- stages run out of order -------------------------------------------------------------------------


def without_swarm(b: Bench) -> Path:
    """The experiment with its swarm directory removed (as before `regmix-ds swarm`)."""
    shutil.rmtree(b.work_dir / "swarm")
    return b.work_dir / "swarm"


@case("order-run-swarm-before-swarm")
def _(b: Bench) -> BadInput:
    swarm = without_swarm(b)
    return BadInput(rd("run-swarm", "--config", b.experiment), [b.work_dir],
                    f"{swarm}: no swarm here; run `regmix-ds swarm --config ...` first")


@case("order-collect-before-swarm")
def _(b: Bench) -> BadInput:
    swarm = without_swarm(b)
    return BadInput(rd("collect", "--config", b.experiment), [b.work_dir], f"{swarm}: no swarm here")


@case("order-proxy-before-swarm")
def _(b: Bench) -> BadInput:
    swarm = without_swarm(b)
    return BadInput(rd("proxy", "--config", b.experiment, "--index", 1), [b.work_dir], f"{swarm}: no swarm here")


@case("order-fit-before-collect")
def _(b: Bench) -> BadInput:
    config = b.edited_experiment(lambda c: c.update(fit={"target": "target"}))
    return BadInput(rd("fit", "--config", config), [b.work_dir], f"{b.work_dir / 'results.csv'}: file not found")


@case("order-verify-before-simulate")
def _(b: Bench) -> BadInput:
    config = b.edited_experiment(lambda c: c.update(fit={"target": "target"}))
    return BadInput(rd("verify", "--config", config), [b.work_dir], f"{b.work_dir / 'best.json'}: file not found")


# ---- command-line flags ----------------------------------------------------------------------------


@case("flag-indices-reversed")
def _(b: Bench) -> BadInput:
    return BadInput(rd("run-swarm", "--config", b.experiment, "--indices", "5-1"), [b.work_dir],
                    "--indices: not an index range: '5-1' (expected e.g. 1-16,20)")


@case("flag-indices-unknown")
def _(b: Bench) -> BadInput:
    return BadInput(rd("run-swarm", "--config", b.experiment, "--indices", "3-9"), [b.work_dir],
                    "--indices: not in the swarm: 5-9")


@case("flag-jobs-negative")
def _(b: Bench) -> BadInput:
    return BadInput(rd("run-swarm", "--config", b.experiment, "--jobs", -1), [b.work_dir],
                    "--jobs: must be >= 1, got -1")


@case("flag-unknown-preset")
def _(b: Bench) -> BadInput:
    return BadInput(rd("swarm", "--config", b.experiment, "--force", "--preset", "nope"), [b.work_dir],
                    "--preset: unknown preset 'nope' (known: default, regmix-paper, regmix-script)")


@case("flag-not-an-integer")
def _(b: Bench) -> BadInput:
    return BadInput(rd("swarm", "--config", b.experiment, "--force", "--n", "ten"), [b.work_dir],
                    "argument --n: invalid int value: 'ten'")


@case("flag-fit-folds")
def _(b: Bench) -> BadInput:
    return BadInput(fit_command(b, "--mixtures", b.regmix / REGMIX_TRAIN[0], "--losses", b.regmix / REGMIX_TRAIN[1],
                                "--folds", 1), [b.tmp / "fit"], "--folds: must be >= 2")


@case("flag-unknown-target")
def _(b: Bench) -> BadInput:
    argv = fit_command(b, "--mixtures", b.regmix / REGMIX_TRAIN[0], "--losses", b.regmix / REGMIX_TRAIN[1])
    argv[argv.index("pile_cc")] = "pile_cc=0.5,poetry=0.5"
    return BadInput(argv, [b.tmp / "fit"], "--target: no loss column 'poetry'")


@case("flag-max-weight")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--max-weight", "pile_cc=lots"), [out, b.model],
                    "--max-weight: value of 'pile_cc' is not a number: 'lots'")


@case("flag-warmup-too-long")
def _(b: Bench) -> BadInput:
    return BadInput(b.train(None, "good", None, "--warmup", 100), [b.tmp / "run"],
                    "--warmup: 100 steps is longer than the run (4 steps)")


@case("flag-proxy-index")
def _(b: Bench) -> BadInput:
    return BadInput(rd("proxy", "--config", b.experiment, "--index", 99), [b.work_dir],
                    f"--index: no mixture {b.work_dir / 'swarm' / 'n99.json'} (swarm indices: 1-4)")


# ---- inputs nobody had listed: parser limits, names, ranges, the operating system, bounds ----------
# Issue 13's classes, a case or more each; docs/bad-input.md groups them under the same headings.


@case("exp-long-integer")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["swarm"].update(n=123454321))
    path.write_text(path.read_text().replace("123454321", "1" * 5000))
    return BadInput(rd("swarm", "--config", path, "--force"), [b.work_dir], f"{path}: holds an integer of more than")


@case("exp-nested-deeply")
def _(b: Bench) -> BadInput:
    path = b.write("exp.yaml", "work_dir: work\nswarm: " + "[" * 200_000 + "]" * 200_000 + "\n")
    return BadInput(rd("swarm", "--config", path), [b.tmp], f"{path}: nested too deeply to be a regmix-ds input")


@case("exp-alias-bomb")
def _(b: Bench) -> BadInput:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = b.write("exp.yaml", "work_dir: work\n" + "\n".join(lines) + "\n")  # 1 kB that expands to 10**9 values
    return BadInput(rd("swarm", "--config", path), [b.tmp],
                    f"{path}: not valid YAML (expands to more than 1,000,000 values")


@case("mixture-nested-deeply")
def _(b: Bench) -> BadInput:
    path = b.write("mixture.json", '{"weights": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: nested too deeply to be a regmix-ds input")


@case("mixture-near-max-float")
def _(b: Bench) -> BadInput:
    path = b.json("mixture.json", {"weights": dict.fromkeys(b.prior(), 1.7e308)})  # their sum overflows to inf
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: weight of")


@case("mixture-number-out-of-range")
def _(b: Bench) -> BadInput:
    path = b.write("mixture.json", '{"weights": {"news": 1e999}}')
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: number 1e999 is out of range")


@case("results-loss-near-max-float")
def _(b: Bench) -> BadInput:
    path = b.results_csv(lambda rows: rows[1].__setitem__(-3, "1.7e308"))
    return BadInput(rd("fit", "--results", path, "--target", "target", "--folds", 2, "--out", b.tmp / "fit"),
                    [b.tmp / "fit"], f"{path}: ")


@case("exp-domain-ends-in-newline")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"]["domains"].update({"news\n": c["data"]["domains"]["news"]}))
    return BadInput(rd("prepare", "--config", path), [b.work_dir],
                    f"{path}: data.domains: invalid domain name 'news\\n'")


@case("mixture-name-ends-in-newline")
def _(b: Bench) -> BadInput:
    path = b.json("mixture.json", {"weights": {"news\n": 1.0}})
    return BadInput(rd("export", "--mixture", path, "--manifest", b.manifest), [b.tmp],
                    f"{path}: invalid domain name 'news\\n'")


@case("regmix-column-ends-in-newline")
def _(b: Bench) -> BadInput:
    path = b.csv_copy(REGMIX_TRAIN[0], lambda lines: [lines[0].replace("pile_cc", '"pile_cc\n"', 1), *lines[1:]])
    return BadInput(fit_command(b, "--mixtures", path, "--losses", b.regmix / REGMIX_TRAIN[1]), [b.tmp / "fit"],
                    f"{path}: line 2 has 1 cells, the header has 13")


@case("exp-negative-seed")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["swarm"].update(seed=-1))
    return BadInput(rd("swarm", "--config", path, "--force"), [b.work_dir],
                    f"{path}: swarm.seed: a seed must be >= 0, got -1")


@case("exp-data-seed-negative")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["data"].update(seed=-3))
    return BadInput(rd("prepare", "--config", path, "--force"), [b.work_dir],
                    f"{path}: data.seed: a seed must be >= 0, got -3")


@case("flag-seed-negative")
def _(b: Bench) -> BadInput:
    return BadInput(b.train(None, "good", None, "--seed", -1), [b.tmp / "run"],
                    "--seed: a seed must be >= 0, got -1")


@case("flag-simulate-seed-negative")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out, "--seed", -2), [out, b.model],
                    "--seed: a seed must be >= 0, got -2")


@case("flag-synth-seed-negative")
def _(b: Bench) -> BadInput:
    return BadInput(rd("synth", "--out", b.tmp / "corpus", "--seed", -1), [b.tmp],
                    "--seed: a seed must be >= 0 and below 2**63, got -1")


@case("flag-synth-documents-huge")
def _(b: Bench) -> BadInput:
    return BadInput(rd("synth", "--out", b.tmp / "corpus", "--docs-per-domain", 10**9), [b.tmp],
                    "--docs-per-domain/--target-docs: at most 1,000,000 documents")


@case("flag-stale-minutes-negative")
def _(b: Bench) -> BadInput:
    return BadInput(rd("collect", "--config", b.experiment, "--stale-minutes", -5), [b.work_dir],
                    "--stale-minutes: must be > 0, got -5")


@case("flag-throttle-zero")
def _(b: Bench) -> BadInput:
    return BadInput(rd("collect", "--config", b.experiment, "--throttle", 0), [b.work_dir],
                    "--throttle: must be >= 1, got 0")


@case("flag-folds-leave-one-run")
def _(b: Bench) -> BadInput:
    path = b.results_csv()
    return BadInput(rd("fit", "--results", path, "--target", "target", "--folds", 2, "--out", b.tmp / "fit"),
                    [b.tmp / "fit"], "--folds: 3 runs in 2 folds leave 1 to fit on in a fold; need at least 2")


@case("os-out-is-a-directory")
def _(b: Bench) -> BadInput:
    out = b.tmp / "best.json"
    out.mkdir()
    return BadInput(rd("simulate", "--model", b.model, "--out", out), [out, b.model],
                    f"{out}: is a directory, expected a file path")


@case("os-out-under-a-file")
def _(b: Bench) -> BadInput:
    blocker = b.write("fit", "a file where the output directory should go\n")
    return BadInput(fit_command(b, "--mixtures", b.regmix / REGMIX_TRAIN[0], "--losses", b.regmix / REGMIX_TRAIN[1]),
                    [blocker], f"{blocker}: is a file, expected a directory")


@case("os-disk-full")
def _(b: Bench) -> BadInput:
    disk = b.full_disk()
    out = disk / "best.json"
    return BadInput(rd("simulate", "--model", b.model, "--out", out), [disk, b.model],
                    f"{out}: cannot write (No space left on device)", while_writing=True)


@case("os-read-only-file-system")
def _(b: Bench) -> BadInput:
    disk = b.read_only_disk()
    argv = fit_command(b, "--mixtures", b.regmix / REGMIX_TRAIN[0], "--losses", b.regmix / REGMIX_TRAIN[1])
    argv[-1] = disk / "fit"
    return BadInput(argv, [disk], f"{disk / 'fit' / 'model.json'}: cannot write (Read-only file system)")


@case("os-out-is-an-input")
def _(b: Bench) -> BadInput:
    mixtures = b.csv_copy(REGMIX_TRAIN[0], lambda lines: lines)
    out = b.tmp / "fit"
    out.mkdir()
    clash = Path(shutil.copy(mixtures, out / "cv_predictions.csv"))
    return BadInput(rd("fit", "--mixtures", clash, "--losses", b.regmix / REGMIX_TRAIN[1], "--target", "pile_cc",
                       "--trees", 5, "--out", out), [b.tmp], f"{clash}: is also an input")


@case("mixture-duplicate-key")
def _(b: Bench) -> BadInput:
    path = b.write("mixture.json", json.dumps({"weights": b.prior()})[:-2] + ', "news": 0.5}}')
    return BadInput(b.train(mixture=path), [b.tmp / "run"], f"{path}: key 'news' appears twice in one object")


@case("exp-duplicate-key")
def _(b: Bench) -> BadInput:
    path = b.write("exp.yaml", b.experiment.read_text() + "work_dir: elsewhere\n")
    return BadInput(rd("swarm", "--config", path, "--force"), [b.work_dir, b.tmp],
                    f"{path}: not valid YAML (key 'work_dir' appears twice in one mapping")


@case("exp-strength-infinite")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["swarm"].update(max_strength=123454321.5))
    path.write_text(path.read_text().replace("123454321.5", ".inf"))
    return BadInput(rd("swarm", "--config", path, "--force"), [b.work_dir], f"{path}: swarm.max_strength: ")


@case("exp-model-setting-nan")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["proxy"].update(lr=123454321.5))
    path.write_text(path.read_text().replace("123454321.5", ".nan"))
    return BadInput(rd("proxy", "--config", path, "--index", 1), [b.work_dir],
                    f"{path}: proxy.lr: must be a finite number, got nan")


@case("exp-boolean-for-a-number")
def _(b: Bench) -> BadInput:
    path = b.edited_experiment(lambda c: c["swarm"].update(n=True))
    return BadInput(rd("swarm", "--config", path, "--force"), [b.work_dir], f"{path}: swarm.n: expected int, got True")


@case("manifest-train-prefixes-swapped")
def _(b: Bench) -> BadInput:
    def swap(data: dict) -> None:
        news, code = data["domains"]["news"], data["domains"]["code"]
        news["train"], code["train"] = code["train"], news["train"]
    manifest = b.data_copy().path
    data = json.loads(manifest.read_text())
    swap(data)
    manifest.write_text(json.dumps(data))
    return BadInput(b.train(manifest=manifest), [b.tmp / "run"],
                    f"{manifest}: domain 'news': its train shards are not the ones prepare recorded in "
                    "news.prepared.json")


@case("manifest-tokenizer-missing")
def _(b: Bench) -> BadInput:
    manifest = b.data_copy().path
    shutil.rmtree(b.tmp / "tokenizer")  # the one the manifest names (../tokenizer)
    return BadInput(b.train(manifest=manifest), [b.tmp / "run"], f"{manifest}: tokenizer ../tokenizer not found")


@case("ds-betas-out-of-range")
def _(b: Bench) -> BadInput:
    base = json.loads(ZERO0.read_text())
    base["optimizer"]["params"]["betas"] = [0.9, 1.5]
    ds = b.json("ds.json", base)
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f"{ds}: ")


@case("ds-eps-not-positive")
def _(b: Bench) -> BadInput:
    base = json.loads(ZERO0.read_text())
    base["optimizer"]["params"]["eps"] = 0
    ds = b.json("ds.json", base)
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f"{ds}: ")


@case("ds-clipping-negative")
def _(b: Bench) -> BadInput:
    ds = b.ds_config(gradient_clipping=-1.0)
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f"{ds}: ")


@case("ds-unknown-zero-key")
def _(b: Bench) -> BadInput:
    base = json.loads(ZERO0.read_text())
    base.setdefault("zero_optimization", {})["stage_three_magic"] = 1
    ds = b.json("ds.json", base)
    return BadInput(b.train(ds=ds), [b.tmp / "run"], "stage_three_magic")


@case("ds-learning-rate-infinite")
def _(b: Bench) -> BadInput:
    base = json.loads(ZERO0.read_text())
    base["optimizer"]["params"]["lr"] = "<INF>"
    ds = b.write("ds.json", json.dumps(base).replace('"<INF>"', "1e999"))
    return BadInput(b.train(ds=ds), [b.tmp / "run"], f"{ds}: number 1e999 is out of range")


@case("exp-a-fifo")
def _(b: Bench) -> BadInput:
    path = b.tmp / "exp.yaml"
    os.mkfifo(path)  # a writer never comes: reading it must not wait for one
    return BadInput(rd("swarm", "--config", path), [b.tmp / "work"], f"{path}: is a FIFO, socket or device")


@case("mixture-a-device")
def _(b: Bench) -> BadInput:
    return BadInput(b.train(mixture="/dev/zero"), [b.tmp / "run"], "/dev/zero: is a FIFO, socket or device")


@case("exp-huge-file")
def _(b: Bench) -> BadInput:
    path = b.tmp / "exp.yaml"
    with open(path, "wb") as handle:
        handle.truncate(65 << 20)  # sparse: 65 MiB of zero bytes, no disk used
    return BadInput(rd("swarm", "--config", path), [b.tmp / "work"], f"{path}: larger than 64 MiB")


# ---- the test ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stderr: str


def run(argv: list) -> Outcome:
    """The command as a user types it, through its entry point; its exit code and stderr."""
    words = [str(word) for word in argv]
    entry = main if words[0] == "regmix-ds" else train_command.main
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()), exits_instead_of_leaving():
        try:
            code = entry(words[1:])
        except SystemExit as exit_:
            code = exit_.code
    return Outcome(code, stderr.getvalue())


@contextlib.contextmanager
def exits_instead_of_leaving():
    """`engine.shutdown` leaves the process with os._exit; here it raises SystemExit instead."""
    def shutdown(code: int):
        raise SystemExit(code)

    original, engine.shutdown = engine.shutdown, shutdown
    try:
        yield
    finally:
        engine.shutdown = original


def snapshot(paths: list[Path]) -> dict[str, tuple | None]:
    """Every file under `paths`: (mtime_ns, size, sha256); an absent path is recorded as None."""
    state: dict[str, tuple | None] = {}
    for path in paths:
        if not path.exists():
            state[str(path)] = None
            continue
        for file in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
            stat = file.stat()
            state[str(file)] = (stat.st_mtime_ns, stat.st_size, hashlib.sha256(file.read_bytes()).hexdigest())
    return state


PROGRESS_LINE = re.compile(r"[\w ]+: \d+(/\d+)? \w+.*")
"""A progress line as `core.progress.LogBar` prints it: `scoring candidates: 20/20 tree (100%) | ...`."""


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, request, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # as a user runs train.py, from the repository
    bad = CASES[name](Bench(request, tmp_path))
    before = snapshot(bad.watch)
    done = run(bad.argv)
    *progress, error = done.stderr.strip().splitlines() or [""]
    print(error)  # docs/bad-input.md quotes it
    assert not progress or (bad.while_writing and all(PROGRESS_LINE.fullmatch(line) for line in progress)), progress
    program = "train.py" if bad.argv[0] == "train.py" else f"regmix-ds {bad.argv[1]}"
    assert done.returncode == 2, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert error.startswith(f"{program}: error: ") and bad.message in error, error
    assert snapshot(bad.watch) == before, "output created or changed"
    assert not (tmp_path / "pwned").exists()


def test_the_table_covers_every_input_kind():
    kinds = {name.split("-")[0] for name in CASES}
    assert kinds == {"exp", "mixture", "ds", "manifest", "shard", "results", "regmix", "model", "result", "flag",
                     "order", "os"}
    assert len(CASES) >= 30


def test_docs_list_every_case():
    text = DOCS.read_text()
    missing = [name for name in CASES if f"`{name}`" not in text]
    assert not missing, f"{DOCS} lacks {missing}"

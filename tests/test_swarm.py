"""The swarm stage: RegMix's released swarm reproduced, caps and dedup honoured, bad inputs refused."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from regmix_ds.commands.main import build_parser, main
from regmix_ds.core.config import SWARM_PRESETS, ExperimentConfig, SwarmConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.manifest import Manifest, Split
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline import swarm as swarm_module
from regmix_ds.pipeline.swarm import sample_swarm, sampling_prior

SMALL_PRIOR = {"web": 0.5, "code": 0.3, "books": 0.15, "math": 0.05}
TOKENS = {"web": 5_000_000, "code": 3_000_000, "books": 1_500_000, "math": 500_000}


def swarm_cli(*args: str) -> int:
    return main(["swarm", *map(str, args)])


def swarm_statistics(weights: np.ndarray) -> np.ndarray:
    """Mean number of zero weights, mean largest weight and mean entropy (nats) per mixture, rows
    renormalised first (the released table is rounded to 3 decimals, so its rows sum to 1 +- 0.003)."""
    weights = weights / weights.sum(axis=1, keepdims=True)
    logs = np.log(np.where(weights > 0, weights, 1.0))
    return np.array([(weights == 0).sum(axis=1).mean(), weights.max(axis=1).mean(),
                     -(weights * logs).sum(axis=1).mean()])


def table(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


@pytest.fixture
def small_prior_file(tmp_path: Path) -> Path:
    path = tmp_path / "prior.yaml"
    path.write_text(yaml.safe_dump(SMALL_PRIOR, sort_keys=False))
    return path


@pytest.fixture
def experiment(tmp_path: Path) -> Path:
    """exp.yaml plus a manifest of four domains (the swarm reads token counts only)."""
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    splits = {name: Split(work / "data" / f"{name}_train", tokens, 100) for name, tokens in TOKENS.items()}
    Manifest(work / "data" / "manifest.json", {"path": "tok", "vocab_size": 256}, 0, splits, splits, {}).save()
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "work_dir": "work",
        "data": {"domains": {name: {"paths": [f"{name}.jsonl"]} for name in TOKENS}},
        "swarm": {"n": 40, "seed": 3, "proxy_tokens": 4_000_000, "max_epochs": 1.0},
    }))
    return config


@pytest.mark.parametrize("seed", [7, 11])
def test_regmix_paper_preset_reproduces_released_swarm_statistics(regmix_data, tmp_path, seed):
    out = tmp_path / "swarm"
    assert swarm_cli("--preset", "regmix-paper", "--prior", regmix_data / "token_prior.yaml",
                     "--n", 512, "--seed", seed, "--out", out) == 0
    ours = table(out / "swarm.csv")
    released = table(regmix_data / "data" / "train_mixture_1m.csv")
    prior_names = list(yaml.safe_load((regmix_data / "token_prior.yaml").read_text())["train"])
    assert list(ours.columns) == ["index", *prior_names]
    assert ours["index"].tolist() == list(range(1, 513))
    got = swarm_statistics(ours.drop(columns="index").to_numpy())
    want = swarm_statistics(released.drop(columns="index").to_numpy())
    np.testing.assert_allclose(got, want, rtol=0.10)


def test_regmix_script_preset_is_much_sparser_than_the_released_swarm(regmix_data):
    """Why regmix-paper is fitted: RegMix's script constants do not give its released table."""
    prior = sampling_prior(regmix_data / "token_prior.yaml")
    script = sample_swarm(prior, SwarmConfig(n=512, seed=7, preset="regmix-script"))
    released = table(regmix_data / "data" / "train_mixture_1m.csv").drop(columns="index").to_numpy()
    zeros_script, zeros_released = swarm_statistics(script.weights)[0], swarm_statistics(released)[0]
    assert zeros_script > 1.2 * zeros_released


def test_same_seed_gives_byte_identical_swarm_and_smaller_n_a_prefix(small_prior_file, tmp_path):
    for name, n, seed in [("a", 30, 5), ("b", 30, 5), ("c", 30, 6), ("d", 10, 5)]:
        assert swarm_cli("--prior", small_prior_file, "--n", n, "--seed", seed, "--out", tmp_path / name) == 0
    text = {name: (tmp_path / name / "swarm.csv").read_bytes() for name in "abcd"}
    assert text["a"] == text["b"]
    assert text["a"] != text["c"]
    assert text["a"].startswith(text["d"])


def test_mixture_files_match_the_table(small_prior_file, tmp_path):
    out = tmp_path / "swarm"
    assert swarm_cli("--prior", small_prior_file, "--n", 12, "--seed", 1, "--out", out) == 0
    rows = table(out / "swarm.csv").set_index("index")
    assert sorted(p.name for p in out.glob("n*.json")) == sorted(f"n{i}.json" for i in range(1, 13))
    for i in range(1, 13):
        mixture = Mixture.load(out / f"n{i}.json")
        mixture.check_domains(SMALL_PRIOR, out / f"n{i}.json")
        assert mixture.domains == tuple(rows.columns) == tuple(SMALL_PRIOR)
        np.testing.assert_array_equal(mixture.vector(rows.columns), rows.loc[i].to_numpy())
        metadata = json.loads((out / f"n{i}.json").read_text())
        assert metadata["index"] == i and metadata["seed"] == 1
        assert (SWARM_PRESETS["default"]["min_strength"] <= metadata["strength"]
                <= SWARM_PRESETS["default"]["max_strength"])


def test_every_mixture_obeys_cap_min_weight_and_dedup():
    config = SwarmConfig(n=200, seed=2, cap=1.6, min_weight=0.02, dedup_distance=0.05, min_strength=0.2)
    swarm = sample_swarm(SMALL_PRIOR, config)
    weights, prior = swarm.weights, np.array(list(SMALL_PRIOR.values()))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(weights <= 1.6 * prior)
    assert np.all((weights == 0) | (weights >= 0.02))
    assert (weights == 0).any(), "min_weight never applied: the test would not notice it being ignored"
    distances = [np.abs(a - b).sum() for a, b in itertools.combinations(weights, 2)]
    assert min(distances) >= 0.05
    loose = sample_swarm(SMALL_PRIOR, dataclasses.replace(config, cap=15.0))
    assert (loose.weights > 1.6 * prior).any(), "the cap never bound: the test would not notice it being ignored"


def test_config_run_uses_manifest_prior_epoch_cap_and_work_dir(experiment):
    assert swarm_cli("--config", experiment) == 0
    config = ExperimentConfig.load(experiment)
    out = config.work.root / "swarm"
    weights = table(out / "swarm.csv").drop(columns="index")
    assert list(weights.columns) == list(TOKENS) and len(weights) == 40
    needed_epochs = weights.to_numpy() * 4_000_000 / np.array(list(TOKENS.values()))
    assert needed_epochs.max() <= 1.0
    # the epoch cap is what binds for math (cap x prior would allow 15 x 5% = 75%)
    assert 1.0 * TOKENS["math"] / 4_000_000 < 15 * 0.05
    settings = json.loads((out / "settings.json").read_text())
    assert settings["prior"] == Manifest.load(config.work.root / "data" / "manifest.json").token_prior()
    assert settings["settings"]["seed"] == 3


def test_flags_override_config_which_overrides_preset(experiment):
    config = ExperimentConfig.load(experiment).swarm
    assert config.n == 40 and config.temperature is None
    resolved = config.resolved()
    assert resolved.max_epochs == 1.0  # set in exp.yaml
    assert resolved.temperature == SWARM_PRESETS["default"]["temperature"]  # from the preset
    assert swarm_cli("--config", experiment, "--n", 7, "--temperature", 1.0) == 0
    settings = json.loads((experiment.parent / "work" / "swarm" / "settings.json").read_text())["settings"]
    assert (settings["n"], settings["temperature"], settings["max_epochs"]) == (7, 1.0, 1.0)


def test_prior_file_flat_or_under_train_key(tmp_path):
    flat, nested = tmp_path / "flat.yaml", tmp_path / "nested.json"
    flat.write_text(yaml.safe_dump({"a": 2, "b": 6}))
    nested.write_text(json.dumps({"train": {"a": 1, "b": 3}, "valid": {"va": 1.0}}))
    assert sampling_prior(flat) == sampling_prior(nested) == {"a": 0.25, "b": 0.75}


def test_force_replaces_an_existing_swarm_and_nothing_else_does(small_prior_file, tmp_path, capsys):
    out = tmp_path / "swarm"
    assert swarm_cli("--prior", small_prior_file, "--n", 5, "--seed", 1, "--out", out) == 0
    before = (out / "swarm.csv").read_bytes()
    assert swarm_cli("--prior", small_prior_file, "--n", 6, "--seed", 2, "--out", out) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "swarm.csv").read_bytes() == before
    assert swarm_cli("--prior", small_prior_file, "--n", 6, "--seed", 2, "--out", out, "--force") == 0
    assert len(table(out / "swarm.csv")) == 6 and (out / "n6.json").exists()
    assert json.loads((out / "settings.json").read_text())["settings"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.yaml", "swarm"]


BAD_INPUTS = {
    "unknown preset": (["--preset", "regmix-nope"], "--preset: unknown preset 'regmix-nope'"),
    "unsatisfiable cap": (["--cap", "0.9"], "--cap: no mixture can satisfy the usage cap"),
    "n beyond dedup": (["--n", "25", "--dedup-distance", "1.5"], "--n: found only"),
    "bad strength range": (["--min-strength", "3", "--max-strength", "1"], "--min-strength: 3 exceeds max_strength 1"),
    "epoch cap without manifest": (["--proxy-tokens", "1000"], "--proxy-tokens: the epoch cap needs"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_settings_fail_in_one_line_and_write_nothing(small_prior_file, tmp_path, capsys, case):
    flags, message = BAD_INPUTS[case]
    out = tmp_path / "out" / "swarm"
    assert swarm_cli("--prior", small_prior_file, "--out", out, *flags) == 2
    assert_one_line_error(capsys, message)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_failure_while_writing_leaves_no_swarm_and_no_staging_dir(small_prior_file, tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise RegmixError("swarm.csv", "disk full")

    monkeypatch.setattr(swarm_module, "write_text_atomic", disk_full)
    assert swarm_cli("--prior", small_prior_file, "--n", 5, "--out", tmp_path / "swarm") == 2
    assert_one_line_error(capsys, "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prior.yaml"]


def test_missing_manifest_is_named_and_no_swarm_dir_is_left(experiment, capsys):
    manifest = experiment.parent / "work" / "data" / "manifest.json"
    manifest.unlink()
    assert swarm_cli("--config", experiment) == 2
    assert_one_line_error(capsys, f"{manifest}: file not found")
    assert not (experiment.parent / "work" / "swarm").exists()


def test_bad_prior_and_missing_sources_are_one_line_errors(tmp_path, capsys):
    zero = tmp_path / "zero.yaml"
    zero.write_text(yaml.safe_dump({"a": 1.0, "b": 0}))
    for args, message in [
        (["--prior", zero, "--out", tmp_path / "s"], f"{zero}: prior share must be > 0, is 0 for b"),
        (["--prior", tmp_path / "absent.yaml", "--out", tmp_path / "s"], "absent.yaml: file not found"),
        (["--out", tmp_path / "s"], "--prior: required without --config"),
        (["--prior", zero], "--out: required without --config"),
    ]:
        assert swarm_cli(*args) == 2
        assert_one_line_error(capsys, message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero.yaml"]


def test_prior_with_config_must_name_the_manifest_domains(experiment, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"web": 1.0, "poetry": 1.0}))
    assert swarm_cli("--config", experiment, "--prior", other) == 2
    assert_one_line_error(capsys, "unknown domain(s) poetry")
    assert not (experiment.parent / "work" / "swarm").exists()


def test_swarm_section_is_checked_when_the_config_loads(experiment):
    raw = yaml.safe_load(experiment.read_text())
    raw["swarm"] = {"n": 10, "strenght": 2.0}
    experiment.write_text(yaml.safe_dump(raw))
    with pytest.raises(RegmixError, match="unknown key.*strenght"):
        ExperimentConfig.load(experiment)
    raw["swarm"] = {"cap": -1}
    experiment.write_text(yaml.safe_dump(raw))
    with pytest.raises(RegmixError, match="swarm.cap: must be a finite number > 0"):
        ExperimentConfig.load(experiment)


def test_help_describes_every_flag_and_setting(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    options = [a for a in commands.choices["swarm"]._actions if a.option_strings]
    assert all(action.help for action in options)
    flags = {flag for action in options for flag in action.option_strings}
    settings = {f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(SwarmConfig)}
    assert settings | {"--config", "--prior", "--out", "--force"} <= flags
    with pytest.raises(SystemExit) as exit_:
        main(["swarm", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(name in text for name in SWARM_PRESETS)


def assert_one_line_error(capsys, message: str) -> None:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("regmix-ds swarm: error: ") and message in err, err

"""Active rounds, the transfer check and the oracle search, on a tiny trained swarm (trained once per module)."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline import oracle
from regmix_ds.pipeline.rounds import draw_next_round
from regmix_ds.regress.tables import Target, read_regmix_tables, read_results
from regmix_ds.regress.transfer import paired_losses, rank_agreement
from tests.conftest import corpus_of, make_experiment
from tests.helpers import run_cli

pytestmark = pytest.mark.slow  # trains a swarm, a second round and a transfer tier


def ok(*args):
    done = run_cli(*args)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def fitted_swarm(tiny_manifest, tmp_path_factory):
    """8 tiny proxies trained in groups of 4, collected, fitted and simulated (once for the module)."""
    config = make_experiment(corpus_of(tiny_manifest), tmp_path_factory.mktemp("rounds") / "experiment", n=8,
                             steps=8, group_size=4)
    raw = yaml.safe_load(config.read_text())
    raw["fit"] = {"target": "target", "folds": 4, "min_data_in_leaf": 2}
    raw["simulate"] = {"candidates": 20000, "bootstrap": 0, "top_k": 8}
    raw["transfer"] = {"preset": "demo", "count": 4, "bootstrap": 200}
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    for stage in (("run-swarm", "--jobs", 2), ("collect",), ("fit",), ("simulate",)):
        ok(stage[0], "--config", config, *stage[1:])
    return config.parent


@pytest.fixture
def experiment(fitted_swarm, tmp_path):
    """A private copy of the fitted swarm's experiment."""
    return ExperimentConfig.load(shutil.copytree(fitted_swarm, tmp_path / "experiment") / "exp.yaml")


def test_a_second_round_samples_near_the_fit_best_and_never_repeats_a_mixture(experiment):
    config = experiment.path
    drawn_twice = [draw_next_round(experiment, experiment.swarm).swarm.weights for _ in range(2)]
    np.testing.assert_array_equal(*drawn_twice)  # a seed and a round number decide it
    out = ok("swarm", "--config", config, "--next-round", "--n", 6)
    assert "round 2, 6 mixtures n9-n14 (4 near the fit's best, 2 fresh" in out
    work = experiment.work
    rounds = {i: json.loads(work.mixture(i).read_text())["round"] for i in work.swarm.indices()}
    assert rounds == {**dict.fromkeys(range(1, 9), 1), **dict.fromkeys(range(9, 15), 2)}
    weights = np.array([Mixture.load(work.mixture(i)).vector(Mixture.load(work.mixture(1)).domains)
                        for i in range(1, 15)])
    distances = np.abs(weights[:, None] - weights[None]).sum(axis=2) + np.eye(14) * 9
    assert distances.min() >= 1e-3  # swarm.dedup_distance of the default preset, across both rounds
    settings = json.loads(work.swarm.settings.read_text())
    assert [r["round"] for r in settings["rounds"]] == [1, 2] and settings["rounds"][1]["near_best"] == 4
    with open(work.swarm.table) as handle:
        assert [row["index"] for row in csv.DictReader(handle)] == [str(i) for i in range(1, 15)]

    ok("run-swarm", "--config", config, "--jobs", 2)  # trains only the new round
    ok("collect", "--config", config)
    with open(work.results) as handle:
        assert [row["round"] for row in csv.DictReader(handle)] == ["1"] * 8 + ["2"] * 6
    fitted = ok("fit", "--config", config)
    assert "on 14 runs" in fitted  # the fit uses every round
    ok("simulate", "--config", config, "--candidates", 2000, "--top-k", 8)
    assert json.loads(work.best.read_text())["rounds"] == {"1": 8, "2": 6}
    plots = ok("report", "--config", config, "--out", work.root / "report-rounds")
    assert "rounds.png" in {Path(line).name for line in plots.splitlines()}


def test_a_later_round_needs_a_fit_of_the_same_swarm(experiment):
    shutil.rmtree(experiment.work.fit.path)
    with pytest.raises(RegmixError, match="not a directory"):
        draw_next_round(experiment, experiment.swarm)


def test_rank_agreement_of_two_tables_pairs_mixtures_by_weights(regmix_data, tmp_path):
    data = regmix_data / "data"
    small = read_regmix_tables(data / "train_mixture_1m.csv", data / "train_pile_loss_1m.csv")
    losses = small.losses["pile_cc"]
    rng = np.random.default_rng(0)
    # A "larger size": the same mixtures in another order, the loss a noisy increasing function of the small one's.
    order = rng.permutation(len(losses))[:64]
    agreeing = write_regmix_pair(tmp_path / "agreeing", small, order, 0.7 * losses[order] + rng.normal(0, 0.01, 64))
    shuffled = write_regmix_pair(tmp_path / "shuffled", small, order, rng.permutation(losses[order]))
    target = Target.parse("pile_cc")
    pairs = paired_losses(small, agreeing, target)
    assert len(pairs.keys) == 64 and np.allclose(pairs.small, losses[order])
    good = rank_agreement(pairs.small, pairs.large, resamples=300, confidence=0.95, seed=0, threshold=0.8)
    assert good.transfers and good.spearman_interval[0] <= good.spearman <= good.spearman_interval[1]
    bad_pairs = paired_losses(small, shuffled, target)
    bad = rank_agreement(bad_pairs.small, bad_pairs.large, resamples=300, confidence=0.95, seed=0, threshold=0.8)
    assert not bad.transfers and bad.verdict().startswith("warning: the ranking may not transfer")

    cli = run_cli("transfer", "--small", f"{data / 'train_mixture_1m.csv'},{data / 'train_pile_loss_1m.csv'}",
                  "--large", f"{tmp_path / 'agreeing' / 'mixtures.csv'},{tmp_path / 'agreeing' / 'losses.csv'}")
    assert cli.returncode == 0 and cli.stdout.startswith("ranking transfers: Spearman"), cli.stdout + cli.stderr


def write_regmix_pair(directory, table, order, losses):
    """RegMix's two-CSV layout (mixtures, losses) for the rows `order` of `table`, with new losses."""
    directory.mkdir()
    with open(directory / "mixtures.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", *table.domains])
        for new_index, row in enumerate(order):
            writer.writerow([1000 + new_index, *table.weights[row]])
    with open(directory / "losses.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "pile_cc"])
        for new_index, loss in enumerate(losses):
            writer.writerow([1000 + new_index, loss])
    return read_regmix_tables(directory / "mixtures.csv", directory / "losses.csv")


def test_the_transfer_check_trains_a_spread_of_mixtures_larger_and_ranks_the_chosen_one(experiment):
    config = experiment.path
    first = ok("transfer", "--config", config)
    assert "missing 6" in first and "--tier transfer" in first
    tier = experiment.work.tier("transfer")
    sources = [json.loads(tier.mixture(i).read_text())["source"] for i in tier.swarm.indices()]
    assert sources[-2:] == ["chosen", "natural"] and all(s.startswith("swarm n") for s in sources[:4])
    predicted = [json.loads(tier.mixture(i).read_text())["predicted"] for i in range(1, 5)]
    assert predicted == sorted(predicted)  # spread from the lowest prediction to the highest
    ok("run-swarm", "--config", config, "--tier", "transfer", "--jobs", 2)
    done = ok("transfer", "--config", config)
    report = json.loads(experiment.work.transfer_report.read_text())
    assert done.splitlines()[0] == report["verdict"]
    assert report["pairs"] == 4 and 1 <= report["chosen_rank"] <= report["ranked"] == 6
    larger = read_results(tier.results)
    assert {json.loads((tier.proxy(int(i)).result).read_text())["preset"] for i in larger.index} == {"demo"}
    assert len(report["paired_losses"]) == 4
    plots = ok("report", "--config", config, "--out", experiment.work.root / "report-transfer")
    assert "transfer.png" in {Path(line).name for line in plots.splitlines()}


def test_the_oracle_search_keeps_the_best_it_measured_and_verify_reports_regret(experiment, tmp_path):
    composition = Mixture.from_weights({**dict.fromkeys(Mixture.load(experiment.work.best).domains, 0.0),
                                        "news": 0.6, "code": 0.3, "chat": 0.1})
    result = oracle.search(experiment, [composition, Mixture.load(experiment.work.best)], rounds=1, per_round=3,
                           seed=0, jobs=2)
    table = read_results(experiment.work.tier("oracle").results)
    losses = Target.parse("target").values(table)
    assert result.proxies == 5 and result.target_loss == losses.min()
    saved = json.loads(experiment.work.oracle_result.read_text())
    assert saved["target_loss"] == result.target_loss and saved["proxies"] == 5
    ok("verify", "--config", experiment.path, "--oracle", experiment.work.oracle_result, "--out", tmp_path / "report")
    rows = {row["name"]: row for row in json.loads((tmp_path / "report" / "verify.json").read_text())}
    assert rows["oracle search"]["target_loss"] == result.target_loss
    assert rows["chosen"]["regret"] == pytest.approx(rows["chosen"]["target_loss"] - result.target_loss)

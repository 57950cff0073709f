import csv
import json
from pathlib import Path

import numpy as np
import pytest

from regmix_ds.commands.main import main
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.layout import FitDir
from regmix_ds.regress.fit import FittedModel
from regmix_ds.regress.tables import Target, read_regmix_tables


def regmix_flags(data, split="train"):
    return ["--mixtures", data / f"data/{split}_mixture_1m.csv", "--losses", data / f"data/{split}_pile_loss_1m.csv"]


def eval_flags(data):
    return ["--eval-mixtures", data / "data/test_mixture_1m.csv", "--eval-losses", data / "data/test_pile_loss_1m.csv"]


def run(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def lightgbm_fit(regmix_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "lightgbm"
    assert run("fit", *regmix_flags(regmix_data), *eval_flags(regmix_data), "--target", "pile_cc", "--out", out) == 0
    return out


@pytest.fixture(scope="module")
def linear_fit(regmix_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "linear"
    assert run("fit", *regmix_flags(regmix_data), *eval_flags(regmix_data), "--target", "pile_cc",
               "--regressor", "linear", "--out", out) == 0
    return out


def held_out(out):
    return json.loads(FitDir(out).report.read_text())["evaluation"]["metrics"]["pile_cc"]


def test_lightgbm_ranks_regmix_test_mixtures(lightgbm_fit):
    report = json.loads(FitDir(lightgbm_fit).report.read_text())
    assert held_out(lightgbm_fit)["spearman"] >= 0.990
    assert held_out(lightgbm_fit)["runs"] == 256
    cross = report["cross_validation"]["metrics"]["pile_cc"]
    assert cross["runs"] == 512 and cross["spearman"] > 0.95 and cross["rmse"] > 0
    assert 100 <= report["trees"] <= 1000 and report["settings"]["learning_rate"] == 0.01


def test_linear_is_clearly_worse(linear_fit):
    assert 0.85 <= held_out(linear_fit)["spearman"] <= 0.95


def test_tree_count_never_sees_the_evaluation_runs(regmix_data, lightgbm_fit, tmp_path):
    out = tmp_path / "without_eval"
    assert run("fit", *regmix_flags(regmix_data), "--target", "pile_cc", "--out", out) == 0
    assert FitDir(out).booster.read_bytes() == FitDir(lightgbm_fit).booster.read_bytes()
    assert "evaluation" not in json.loads(FitDir(out).report.read_text())


def test_saved_model_predicts_like_the_report(regmix_data, lightgbm_fit, tmp_path):
    fitted = FittedModel.load(lightgbm_fit)
    test = read_regmix_tables(*regmix_flags(regmix_data, "test")[1::2])
    predicted = fitted.predict_table(test.mixtures)
    measured = Target.parse("pile_cc").values(test)
    assert np.sqrt(np.mean((predicted - measured) ** 2)) == pytest.approx(held_out(lightgbm_fit)["rmse"])
    assert run("predict", "--model", lightgbm_fit, "--mixtures", regmix_data / "data/test_mixture_1m.csv",
               "--out", tmp_path / "p.csv") == 0
    with open(tmp_path / "p.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["index"] for r in rows] == list(test.index)
    np.testing.assert_array_equal([float(r["predicted"]) for r in rows], predicted)
    training = read_regmix_tables(*regmix_flags(regmix_data)[1::2])
    assert fitted.support_max == dict(zip(training.domains, training.weights.max(axis=0).tolist()))


def test_weighted_target_and_results_csv(tmp_path, regmix_data):
    # Our own layout: 60 RegMix runs as results.csv, plus a failed run that must be skipped.
    table = read_regmix_tables(*regmix_flags(regmix_data)[1::2])
    domains = table.domains
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "status", *[f"w:{d}" for d in domains], "loss:pile_cc", "loss:github", "tokens",
                         "wall_seconds"])
        for i in range(60):
            writer.writerow([i, "done", *table.weights[i], table.losses["pile_cc"][i], table.losses["github"][i],
                             1000, 1.0])
        writer.writerow([99, "failed", *table.weights[0], "", "", 0, 0])
    out = tmp_path / "fit"
    assert run("fit", "--results", path, "--target", "pile_cc=0.7,github=0.3", "--regressor", "linear",
               "--out", out) == 0
    report = json.loads(FitDir(out).report.read_text())
    assert report["runs"] == 60 and report["target"] == "0.7*pile_cc+0.3*github"
    fitted = FittedModel.load(out)
    _, target = fitted.training_data()
    np.testing.assert_allclose(target, 0.7 * table.losses["pile_cc"][:60] + 0.3 * table.losses["github"][:60])


def test_fit_with_config_reads_results_and_section(tmp_path, regmix_data):
    table = read_regmix_tables(*regmix_flags(regmix_data)[1::2])
    work = tmp_path / "work"
    work.mkdir()
    with open(work / "results.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "status", *[f"w:{d}" for d in table.domains], "loss:pile_cc"])
        writer.writerows([i, "done", *table.weights[i], table.losses["pile_cc"][i]] for i in range(40))
    config = tmp_path / "exp.yaml"
    config.write_text("work_dir: work\ndata:\n  domains:\n    a: {paths: [a.txt]}\n"
                      "fit:\n  target: pile_cc\n  regressor: linear\n  folds: 4\n")
    assert run("fit", "--config", config) == 0
    report = json.loads(FitDir(work / "fit").report.read_text())
    assert report["cross_validation"]["folds"] == 4 and report["runs"] == 40


def assert_one_line_error(capsys, problem):
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err, err


@pytest.mark.parametrize(
    "mixtures, losses, extra, problem",
    [
        ("index,a,b\n1,1,0\n2,0,1\n", "index,x\n1,3\n5,3\n", [], "has no loss row"),
        ("index,a,b\n1,1,0\n2,0,1\n", "index,x\n1,3\n2,nan\n", [], "missing or not finite at index 2"),
        ("index,a,b\n1,1,0\n2,0,1\n", "index,x\n1,3\n2,4\n", ["--target", "nope"], "no loss column 'nope'"),
        ("index,a,b\n1,1,0\n2,0,1\n", "index,x\n1,3\n2,4\n", ["--folds", "5"], "2 runs but 5 folds"),
        ("index,a,b\n1,1,-1\n2,0,1\n", "index,x\n1,3\n2,4\n", [], "negative weight"),
        ("index,a,b\n1,1,0\n2,0,1\n", "index,x\n1,3\n2,4\n", ["--trees", "0"], "--trees: must be >= 1"),
    ],
)
def test_bad_fit_inputs_write_nothing(tmp_path, capsys, mixtures, losses, extra, problem):
    (tmp_path / "m.csv").write_text(mixtures)
    (tmp_path / "l.csv").write_text(losses)
    args = ["fit", "--mixtures", tmp_path / "m.csv", "--losses", tmp_path / "l.csv", "--out", tmp_path / "out"]
    args += extra if "--target" in extra else ["--target", "x", *extra]
    assert run(*args) == 2
    assert_one_line_error(capsys, problem)
    assert not (tmp_path / "out").exists()


def test_predict_rejects_wrong_domains_and_negative_weights(linear_fit, tmp_path, capsys):
    domains = FittedModel.load(linear_fit).domains
    short = tmp_path / "short.csv"
    short.write_text("index," + ",".join(domains[:-1]) + "\n1," + ",".join(["1"] * (len(domains) - 1)) + "\n")
    negative = tmp_path / "negative.csv"
    negative.write_text("index," + ",".join(domains) + "\n1,-1," + ",".join(["1"] * (len(domains) - 1)) + "\n")
    for path, problem in ((short, f"expected {len(domains)} (missing {domains[-1]})"), (negative, "negative weight")):
        assert run("predict", "--model", linear_fit, "--mixtures", path, "--out", tmp_path / "p.csv") == 2
        assert_one_line_error(capsys, problem)
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("damage, problem", [
    (lambda d: FitDir(d).booster.write_text(FitDir(d).booster.read_text()[:5000]), "does not match model.json"),
    (lambda d: FitDir(d).sidecar.write_text("{not json"), "not valid JSON"),
    (lambda d: FitDir(d).sidecar.write_text('{"format": "regmix-ds/fit-1"}'), "malformed model file"),
    (lambda d: FitDir(d).booster.unlink(), "cannot read the booster"),
])
def test_unreadable_model_is_one_line_error(lightgbm_fit, tmp_path, capsys, damage, problem):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(lightgbm_fit, model)
    damage(model)
    with pytest.raises(RegmixError, match=problem):
        FittedModel.load(model)
    (tmp_path / "m.csv").write_text("index,a\n1,1\n")
    assert run("predict", "--model", model, "--mixtures", tmp_path / "m.csv", "--out", tmp_path / "p.csv") == 2
    assert_one_line_error(capsys, problem)
    assert not (tmp_path / "p.csv").exists()


def test_changed_training_input_is_detected(tmp_path, regmix_data, capsys):
    m, losses = tmp_path / "m.csv", tmp_path / "l.csv"
    m.write_text((regmix_data / "data/train_mixture_1m.csv").read_text())
    losses.write_text((regmix_data / "data/train_pile_loss_1m.csv").read_text())
    assert run("fit", "--mixtures", m, "--losses", losses, "--target", "pile_cc", "--regressor", "linear",
               "--out", tmp_path / "fit") == 0
    losses.write_text(losses.read_text().replace("5.", "6.", 1))
    with pytest.raises(RegmixError, match="changed since the fit"):
        FittedModel.load(tmp_path / "fit").training_data()


@pytest.fixture(scope="module")
def auto_fit(regmix_data, tmp_path_factory):
    """`fit --regressor auto --all-losses` on the first 120 of RegMix's runs (small, so every surrogate is quick)."""
    base = tmp_path_factory.mktemp("auto")
    for name in ("train_mixture_1m.csv", "train_pile_loss_1m.csv"):
        lines = (regmix_data / "data" / name).read_text().splitlines()
        (base / name).write_text("\n".join(lines[:121]) + "\n")
    out = base / "fit"
    assert run("fit", "--mixtures", base / "train_mixture_1m.csv", "--losses", base / "train_pile_loss_1m.csv",
               "--target", "pile_cc", "--regressor", "auto", "--all-losses", "--folds", 3, "--trees", 300,
               "--members", 2, "--min-data-in-leaf", 10, "--out", out) == 0
    return out


def test_auto_lists_every_surrogate_and_keeps_the_best_ranked(auto_fit):
    from regmix_ds.regress.fit import read_cv_predictions
    from regmix_ds.regress.surrogates import FAMILY

    report = json.loads(FitDir(auto_fit).report.read_text())
    candidates = report["selection"]["candidates"]
    assert list(candidates) == list(FAMILY) and report["selection"]["requested"] == "auto"
    spearman = {name: entry["metrics"]["spearman"] for name, entry in candidates.items()}
    assert report["regressor"] == max(spearman, key=spearman.get)
    assert all({"spearman", "pearson", "rmse"} <= set(entry["metrics"]) for entry in candidates.values())
    _, columns = read_cv_predictions(auto_fit)
    assert set(columns) == {"predicted", *(f"predicted:{name}" for name in FAMILY)}
    np.testing.assert_array_equal(columns["predicted"], columns[f"predicted:{report['regressor']}"])
    kept = FittedModel.load(auto_fit)
    assert kept.model.regressor == report["regressor"] and kept.settings.regressor == "auto"
    assert kept.candidates == FAMILY


def test_auto_keeps_each_surrogate_tried_as_a_fit_of_its_own(auto_fit):
    kept = FittedModel.load(auto_fit)
    weights, _ = kept.training_data()
    for name in kept.candidates:
        candidate = FittedModel.load(FitDir(auto_fit).candidate(name).path)
        assert candidate.model.regressor == name == candidate.settings.regressor
        if name == kept.model.regressor:
            np.testing.assert_array_equal(candidate.model.predict(weights), kept.model.predict(weights))


def test_all_losses_fits_every_loss_with_the_kept_surrogate(auto_fit):
    report = json.loads(FitDir(auto_fit).report.read_text())
    kept = FittedModel.load(auto_fit)
    table = kept.training_table()
    assert kept.losses == tuple(table.losses) and set(report["losses"]) == set(table.losses)
    github = kept.loss_model("github")
    assert github.model.regressor == kept.model.regressor and github.target.label == "github"
    assert report["losses"]["github"]["metrics"]["spearman"] > 0.8


@pytest.mark.parametrize("fixture", ["linear_fit", "lightgbm_fit"])
def test_a_model_json_from_before_the_surrogate_family_still_loads(fixture, request, tmp_path):
    import shutil

    model = Path(shutil.copytree(request.getfixturevalue(fixture), tmp_path / "old"))
    sidecar = json.loads(FitDir(model).sidecar.read_text())
    for key in ("members", "all_losses"):  # settings that did not exist then
        del sidecar["settings"][key]
    FitDir(model).sidecar.write_text(json.dumps(sidecar))
    old, new = FittedModel.load(model), FittedModel.load(request.getfixturevalue(fixture))
    weights, _ = new.training_data()
    np.testing.assert_array_equal(old.model.predict(weights), new.model.predict(weights))
    assert old.losses == old.candidates == ()


def test_a_fit_killed_at_any_instant_leaves_the_old_fit_or_the_new_one_whole(regmix_data, tmp_path):
    """SIGKILL at every fault point of the writing: model, report and predictions always agree."""
    from regmix_ds.core.config import FitConfig
    from regmix_ds.regress.fit import fit
    from tests.kills import kill_everywhere

    table = read_regmix_tables(regmix_data / "data/train_mixture_1m.csv", regmix_data / "data/train_pile_loss_1m.csv")
    out = tmp_path / "fit"
    files = FitDir(out)

    def fit_with(seed):
        return lambda: fit(table, Target.parse("pile_cc"), FitConfig(regressor="linear", folds=3, seed=seed), out)

    fit_with(0)()
    outputs = [files.sidecar, files.report, files.cv_predictions]
    old = {path: path.read_bytes() for path in outputs}

    def reset():
        for leftover in out.glob(".*"):  # a killed fit's staged files, journals and marker
            leftover.unlink()
        for path, content in old.items():
            path.write_bytes(content)

    assert kill_everywhere(fit_with(1), outputs, reset) >= 10  # three staged, three journals, the marker, renames
    FittedModel.load(out)  # and what is left loads

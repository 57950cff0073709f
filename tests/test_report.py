import json
import shutil

import numpy as np
import pytest

from regmix_ds.commands.main import main
from regmix_ds.core.config import FitConfig, SimulateConfig
from regmix_ds.regress.fit import fit
from regmix_ds.regress.report import report
from regmix_ds.regress.simulate import run_simulate
from regmix_ds.regress.tables import Target, read_regmix_tables

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted(regmix_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    table = read_regmix_tables(regmix_data / "data/train_mixture_1m.csv", regmix_data / "data/train_pile_loss_1m.csv")
    fit(table, Target.parse("pile_cc"), FitConfig(regressor="linear"), out / "fit")
    run_simulate(out / "fit", out / "best.json", SimulateConfig(candidates=5000, bootstrap=4),
                 regmix_data / "token_prior.yaml", progress=False)
    return out


def test_report_writes_three_pngs(fitted, tmp_path):
    assert main(["report", "--model", str(fitted / "fit"), "--best", str(fitted / "best.json"),
                 "--out", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["domain_vs_target.png", "predicted_vs_measured.png", "weights.png"]
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


def test_without_best_json_only_the_fit_plots(fitted, tmp_path):
    written = report(fitted / "fit", tmp_path)
    assert sorted(p.name for p in written) == ["domain_vs_target.png", "predicted_vs_measured.png"]


def test_intervals_drawn_only_when_present(fitted):
    from regmix_ds.core.mixture import Mixture
    from regmix_ds.regress.report import chosen_weights

    best = json.loads((fitted / "best.json").read_text())
    mixture = Mixture.load(fitted / "best.json")
    with_bars = chosen_weights(best, mixture).axes[0]
    best["intervals"] = {"confidence": 0.95, "bootstrap": 0}
    without = chosen_weights(best, mixture).axes[0]
    assert len(with_bars.lines) + len(with_bars.collections) > len(without.lines) + len(without.collections)
    heights = [patch.get_height() for patch in with_bars.patches]
    np.testing.assert_allclose(sorted(heights[len(mixture.domains):]), sorted(mixture.weights.values()))


def test_bad_best_json_writes_nothing(fitted, tmp_path, capsys):
    bad = tmp_path / "best.json"
    bad.write_text('{"weights": {"pile_cc": 1.0}}')
    out = tmp_path / "plots"
    assert main(["report", "--model", str(fitted / "fit"), "--best", str(bad), "--out", str(out)]) == 2
    assert "lacks domain" in capsys.readouterr().err
    assert not out.exists()


def test_several_best_json_side_by_side(fitted, regmix_data, tmp_path):
    from regmix_ds.core.mixture import Mixture
    from regmix_ds.regress.report import chosen_weights

    settings = SimulateConfig(candidates=5000, bootstrap=2, proposer="optimize")
    run_simulate(fitted / "fit", tmp_path / "optimized.json", settings, regmix_data / "token_prior.yaml",
                 progress=False)
    assert main(["report", "--model", str(fitted / "fit"), "--best", str(fitted / "best.json"),
                 "--best", str(tmp_path / "optimized.json"), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "weights.png").read_bytes().startswith(PNG)
    paths = (fitted / "best.json", tmp_path / "optimized.json")
    entries = [(json.loads(p.read_text()), Mixture.load(p)) for p in paths]
    axes = chosen_weights(*entries[0], compared=entries[1:]).axes[0]
    domains = len(entries[0][1].domains)
    assert len(axes.patches) == 3 * domains  # prior, then each chosen mixture
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["prior", "linear, topk", "linear, optimize"]


def test_one_panel_per_surrogate_after_auto():
    from regmix_ds.regress.report import predicted_vs_measured, surrogate_panels

    measured = np.linspace(3, 4, 20)
    columns = {"predicted": measured + 0.01, "predicted:linear": measured + 0.1, "predicted:gp": measured + 0.01}
    panels = surrogate_panels(columns, "gp")
    assert list(panels) == ["linear", "gp (kept)"]
    assert len(predicted_vs_measured(measured, panels, "pile_cc").axes) == 2
    assert list(surrogate_panels({"predicted": measured}, "lightgbm")) == ["lightgbm"]


@pytest.mark.slow
def test_a_report_killed_at_any_instant_leaves_no_mix_of_plots(fitted, tmp_path):
    """SIGKILL at every fault point of its writing: no plots or all three new ones (the same bytes as
    an uninterrupted run), whatever instant it was killed at."""
    from tests.kills import kill_everywhere

    out = tmp_path / "report"
    outputs = [out / name for name in ("predicted_vs_measured.png", "domain_vs_target.png", "weights.png")]

    def reset():
        shutil.rmtree(out, ignore_errors=True)

    assert kill_everywhere(lambda: report(fitted / "fit", out, fitted / "best.json"), outputs, reset) >= 10

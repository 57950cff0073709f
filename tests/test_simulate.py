import json

import numpy as np
import pytest

from regmix_ds.commands.main import main
from regmix_ds.core.config import FitConfig, SimulateConfig
from regmix_ds.core.dsconfig import load_ds_config
from regmix_ds.core.manifest import FORMAT as MANIFEST_FORMAT
from regmix_ds.core.mixture import Mixture
from regmix_ds.regress.fit import FittedModel, fit
from regmix_ds.regress.simulate import draw_candidates, resolve_prior, run_simulate, simulate
from regmix_ds.regress.tables import Target, prior_by_domain, read_regmix_tables
from tests.kills import kill_everywhere

SMALL = {"candidates": 50_000, "bootstrap": 3}


def run(*args):
    return main([str(a) for a in args])


def fitted_model(regmix_data, out, regressor):
    table = read_regmix_tables(regmix_data / "data/train_mixture_1m.csv", regmix_data / "data/train_pile_loss_1m.csv")
    fit(table, Target.parse("pile_cc"), FitConfig(regressor=regressor), out)
    return out


@pytest.fixture(scope="module")
def lightgbm_model(regmix_data, tmp_path_factory):
    return fitted_model(regmix_data, tmp_path_factory.mktemp("fit") / "lightgbm", "lightgbm")


@pytest.fixture(scope="module")
def linear_model(regmix_data, tmp_path_factory):
    return fitted_model(regmix_data, tmp_path_factory.mktemp("fit") / "linear", "linear")


def write_zero3(path):
    path.write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 2,
        "optimizer": {"type": "AdamW", "params": {"lr": 0.001, "torch_adam": True}},
        "zero_optimization": {"stage": 3},
        "gradient_clipping": 1.0,
    }))
    return path


@pytest.fixture
def zero3_config(tmp_path):
    return write_zero3(tmp_path / "zero3.json")


@pytest.fixture(scope="module")
def regmix_best(lightgbm_model, regmix_data, tmp_path_factory):
    """`simulate` on RegMix's runs with the CLI, into a ZeRO-3 config (50k candidates, 3 refits)."""
    out = tmp_path_factory.mktemp("simulate")
    config = write_zero3(out / "zero3.json")
    assert run("simulate", "--model", lightgbm_model, "--prior", regmix_data / "token_prior.yaml",
               "--candidates", SMALL["candidates"], "--bootstrap", SMALL["bootstrap"], "--out", out / "best.json",
               "--deepspeed-config", config, "--out-config", out / "launch.json") == 0
    return out


def test_best_mixture_is_mostly_pile_cc_with_intervals(regmix_best):
    best = json.loads((regmix_best / "best.json").read_text())
    mixture = Mixture.load(regmix_best / "best.json")
    assert 0.80 <= mixture.weights["pile_cc"] <= 0.95
    low, high = best["intervals"]["weights"]["pile_cc"]
    assert 0 < low <= high < 1 and best["intervals"]["bootstrap"] == SMALL["bootstrap"]
    assert set(best["intervals"]["weights"]) == set(mixture.domains)
    p_low, p_high = best["intervals"]["predicted_target"]
    assert p_low <= p_high and np.isfinite(best["predicted_target"])
    assert best["top_k"]["k"] == 128 and best["top_k"]["best"] <= best["top_k"]["worst"]
    assert best["candidates"]["drawn"] == SMALL["candidates"] > best["candidates"]["in_support"] > 128
    assert {"model", "training_mixtures", "training_losses", "prior", "deepspeed_config"} <= set(best["inputs"])
    assert all(len(entry["sha256"]) == 64 for entry in best["inputs"].values())


def test_mixture_lands_in_the_deepspeed_config(regmix_best):
    launch = load_ds_config(regmix_best / "launch.json")
    assert launch.mixture == Mixture.load(regmix_best / "best.json")
    assert launch.zero_stage == 3 and launch.settings["gradient_clipping"] == 1.0
    assert "regmix" not in json.loads((regmix_best / "zero3.json").read_text())


def test_linear_model_stays_inside_the_training_support(linear_model, regmix_data):
    fitted = FittedModel.load(linear_model)
    prior, _ = resolve_prior(fitted, regmix_data / "token_prior.yaml", None)
    unbounded = simulate(fitted, prior, SimulateConfig(candidates=50_000, bootstrap=0,
                                                       max_weight=dict.fromkeys(fitted.domains, 1.0)), progress=False)
    assert unbounded.mixture.weights["enron_emails"] > 0.2  # what the support filter is for
    bounded = simulate(fitted, prior, SimulateConfig(candidates=50_000, bootstrap=2), progress=False)
    for domain, weight in bounded.mixture.weights.items():
        assert weight <= fitted.support_max[domain] + 1e-12
        assert bounded.weight_intervals[domain][1] <= fitted.support_max[domain] + 1e-12
    assert bounded.mixture.weights["enron_emails"] < unbounded.mixture.weights["enron_emails"]


def test_every_candidate_averaged_is_inside_the_caps(linear_model, regmix_data):
    fitted = FittedModel.load(linear_model)
    prior, _ = resolve_prior(fitted, regmix_data / "token_prior.yaml", None)
    settings = SimulateConfig(candidates=20_000, bootstrap=0, seed=3)
    drawn = draw_candidates(np.array([prior[d] for d in fitted.domains]), settings, np.random.default_rng([3, 0]))
    caps = np.array([fitted.support_max[d] for d in fitted.domains])
    inside = drawn[(drawn <= caps).all(axis=1)]
    top = fitted.model.lowest_k(inside, 128)
    assert (inside[top.indices] <= caps).all()
    expected = inside[top.indices].mean(axis=0)
    result = simulate(fitted, prior, settings, progress=False)
    np.testing.assert_allclose(result.mixture.vector(fitted.domains), expected / expected.sum())


def write_manifest(path, tokens):
    def split(name, n):
        return {"prefix": f"data/{name}", "tokens": n, "documents": 1}

    path.write_text(json.dumps({
        "format": MANIFEST_FORMAT, "tokenizer": {"path": "tok", "vocab_size": 8, "eos_token_id": 0}, "seed": 0,
        "domains": {d: {"train": split(f"{d}_train", n), "valid": split(f"{d}_valid", 1)} for d, n in tokens.items()},
    }))
    return path


def test_token_budget_caps_domains(linear_model, regmix_data, tmp_path):
    fitted = FittedModel.load(linear_model)
    prior = prior_by_domain(regmix_data / "token_prior.yaml")
    manifest = write_manifest(tmp_path / "manifest.json", {d: int(prior[d] * 1e9) for d in fitted.domains})
    assert run("simulate", "--model", linear_model, "--manifest", manifest, "--candidates", 50_000, "--bootstrap", 0,
               "--target-tokens", 1_000_000_000, "--max-epochs", 3, "--out", tmp_path / "best.json") == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["caps"]["pile_cc"] == pytest.approx(3 * prior["pile_cc"] / sum(prior.values()), rel=1e-6)
    assert best["prior_source"] == str(manifest)
    for domain, weight in best["weights"].items():
        assert weight <= best["caps"][domain] + 1e-12


def test_same_seed_same_mixture(linear_model, tmp_path):
    for name in ("a", "b"):
        assert run("simulate", "--model", linear_model, "--candidates", 20_000, "--bootstrap", 2, "--seed", 7,
                   "--out", tmp_path / f"{name}.json") == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a["weights"] == b["weights"] and a["intervals"] == b["intervals"]
    assert a["prior_source"] == "mean training mixture"


@pytest.mark.parametrize("extra, problem", [
    (["--deepspeed-config", "{config}"], "--out-config: give --deepspeed-config and --out-config together"),
    (["--prior", "{prior}"], "prior does not match the model's domains (missing"),
    (["--max-weight", "pile_cc=0.0001,arxiv=0.0001", "--top-k", "1000"], "candidates lie inside the allowed region"),
    (["--max-weight", "nope=0.5"], "--max-weight: unknown domain(s) nope"),
    (["--top-k", "0"], "--top-k: must be between 1 and candidates"),
    (["--target-tokens", "100"], "--target-tokens: give both max_epochs and target_tokens"),
    (["--deepspeed-config", "{bad_config}", "--out-config", "{out_config}"], "needs an \"optimizer\" block"),
])
def test_bad_simulate_inputs_write_nothing(linear_model, zero3_config, tmp_path, capsys, extra, problem):
    (tmp_path / "prior.yaml").write_text("pile_cc: 1\n")
    (tmp_path / "bad.json").write_text('{"train_micro_batch_size_per_gpu": 1}')
    names = {"config": zero3_config, "prior": tmp_path / "prior.yaml", "bad_config": tmp_path / "bad.json",
             "out_config": tmp_path / "launch.json"}
    extra = [value.format(**names) for value in extra]
    assert run("simulate", "--model", linear_model, "--candidates", 2000, "--bootstrap", 0,
               "--out", tmp_path / "best.json", *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err, err
    assert not (tmp_path / "best.json").exists() and not (tmp_path / "launch.json").exists()


def test_simulate_from_config_uses_work_dir(linear_model, tmp_path):
    import shutil

    work = tmp_path / "work"
    shutil.copytree(linear_model, work / "fit")
    config = tmp_path / "exp.yaml"
    config.write_text("work_dir: work\ndata:\n  domains:\n    a: {paths: [a.txt]}\n"
                      "simulate:\n  candidates: 5000\n  bootstrap: 0\n  top_k: 16\n")
    assert run("simulate", "--config", config) == 0
    best = json.loads((work / "best.json").read_text())
    assert best["settings"]["top_k"] == 16 and best["candidates"]["drawn"] == 5000


@pytest.fixture(scope="module")
def guarded_model(regmix_data, tmp_path_factory):
    """A linear fit of every loss of RegMix's runs (fit.all_losses), for the guardrails."""
    out = tmp_path_factory.mktemp("fit") / "all_losses"
    table = read_regmix_tables(regmix_data / "data/train_mixture_1m.csv", regmix_data / "data/train_pile_loss_1m.csv")
    fit(table, Target.parse("pile_cc"), FitConfig(regressor="linear", all_losses=True), out)
    return out


def test_guardrail_holds_and_says_whether_it_binds(guarded_model, regmix_data, tmp_path):
    assert run("simulate", "--model", guarded_model, "--prior", regmix_data / "token_prior.yaml", "--candidates",
               50_000, "--bootstrap", 2, "--guard", "github=0,arxiv=0.5", "--out", tmp_path / "best.json") == 0
    best = json.loads((tmp_path / "best.json").read_text())
    guards = best["guardrails"]["guards"]
    fitted = FittedModel.load(guarded_model)
    chosen = Mixture.load(tmp_path / "best.json").vector(fitted.domains)[None, :]
    for loss, guard in guards.items():
        assert guard["predicted"] <= guard["limit"] + 1e-9
        assert guard["predicted"] == pytest.approx(fitted.loss_model(loss).model.predict(chosen)[0])
        unguarded = np.array([[best["guardrails"]["unguarded"]["weights"][d] for d in fitted.domains]])
        breaks = fitted.loss_model(loss).model.predict(unguarded)[0] > guard["limit"] + 1e-9
        assert guard["binds"] == bool(breaks)
    assert guards["github"]["binds"]  # RegMix's Pile-CC optimum gives up github loss, which the guard forbids
    assert guards["github"]["limit"] == guards["github"]["reference"]
    assert best["guardrails"]["reference"] == "natural"


def test_optimizer_proposal_respects_caps_and_token_budgets(linear_model, regmix_data, tmp_path):
    fitted = FittedModel.load(linear_model)
    prior = prior_by_domain(regmix_data / "token_prior.yaml")
    manifest = write_manifest(tmp_path / "manifest.json", {d: int(prior[d] * 1e9) for d in fitted.domains})
    assert run("simulate", "--model", linear_model, "--manifest", manifest, "--candidates", 50_000, "--bootstrap", 2,
               "--target-tokens", 1_000_000_000, "--max-epochs", 3, "--proposer", "optimize",
               "--out", tmp_path / "best.json") == 0
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["proposer"] == "optimize" and set(best["proposals"]) == {"topk", "optimize"}
    for domain, weight in best["weights"].items():
        assert weight <= best["caps"][domain] + 1e-9
    optimized, averaged = best["proposals"]["optimize"], best["proposals"]["topk"]
    assert best["predicted_target"] == optimized["predicted_target"] <= averaged["predicted_target"]
    for domain, (low, high) in best["intervals"]["weights"].items():
        assert 0 <= low <= high <= best["caps"][domain]


@pytest.mark.parametrize("extra, problem", [
    (["--guard", "github=-5"], "--guard: only 0 of"),
    (["--proposer", "optimize"], "--proposer: optimize needs a smooth surrogate"),
    (["--kl-weight", "1"], "--kl-weight: only the optimize proposer has a KL term"),
])
def test_guardrails_and_proposers_refuse_what_they_cannot_do(guarded_model, lightgbm_model, tmp_path, capsys,
                                                               extra, problem):
    model = lightgbm_model if "optimize" in extra else guarded_model
    assert run("simulate", "--model", model, "--candidates", 20_000, "--bootstrap", 0,
               "--out", tmp_path / "best.json", *extra) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err, err
    assert not (tmp_path / "best.json").exists()


def test_best_json_and_its_deepspeed_config_are_replaced_together_at_any_kill(linear_model, regmix_data, tmp_path):
    """SIGKILL at every fault point of a simulate run (staged writes, journals, the commit marker,
    each rename): best.json and the launch config are both the old answer or both the new one."""
    out, launch = tmp_path / "best.json", tmp_path / "launch.json"
    config = write_zero3(tmp_path / "zero3.json")

    def simulate_with(seed):
        settings = SimulateConfig(candidates=2000, top_k=16, bootstrap=2, seed=seed)
        return lambda: run_simulate(linear_model, out, settings, regmix_data / "token_prior.yaml",
                                    deepspeed_config=config, out_config=launch, progress=False)

    simulate_with(0)()
    old = {path: path.read_bytes() for path in (out, launch)}

    def reset():
        for leftover in tmp_path.glob(".*"):  # a killed run's staged files, journals and marker
            leftover.unlink()
        for path, content in old.items():
            path.write_bytes(content)

    points = kill_everywhere(simulate_with(1), [out, launch], reset)
    assert points >= 7  # two staged writes, two journals (each opened and written), the marker, two renames

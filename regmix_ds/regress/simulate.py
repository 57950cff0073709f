"""Simulate: score a million candidate mixtures with the fitted regression and average the best k.

1. Candidates come from Dirichlet(prior x strength), with `strengths` strength values
   log-spaced over [strength_min, strength_max] and the candidates split evenly among them
   (low strengths give near one-domain mixtures, high ones mixtures near the prior; RegMix
   samples its proxy mixtures the same way).
2. Only candidates inside the region the proxies covered are kept: no domain above the
   largest weight it had in the training runs (or an explicit cap, which replaces that
   domain's training maximum), and, given a manifest, `--target-tokens` and `--max-epochs`, no
   domain needing more than `max_epochs` passes over its training tokens. A regression
   extrapolates badly: unconstrained, a linear fit on RegMix's runs puts most weight on
   enron_emails, a domain never above 2.6% in training.
3. The k candidates with the lowest predicted target are averaged: the mixture. (For
   LightGBM the k lowest are found exactly, without scoring every tree of every candidate:
   `regmix_ds.treescore`.)
4. Confidence: `bootstrap` refits on resampled proxy runs (drawn with replacement; same tree
   count, same candidates) each choose a mixture the same way and predict the target of the
   mixture chosen in step 3. Percentiles of the refits' weights give each weight's interval;
   percentiles of their predictions give the predicted target's. A refit sees only ~63% of
   the distinct runs, so near the optimum it tends to predict a higher loss than the full
   model: the point prediction can sit below its interval, which is then the honest reading.

The prior is a prior file, the manifest's token shares, or else the mean training mixture.
The result is best.json (weights, predicted target, intervals, settings, input hashes) and,
given a DeepSpeed config, a copy of it with the mixture in its `"regmix"` block
(`regmix_ds.dsconfig`: the input is checked the way train.py will check it).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from regmix_ds.core.config import SimulateConfig
from regmix_ds.core.dsconfig import load_ds_config, with_mixture
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import file_hash, write_json_atomic
from regmix_ds.core.layout import FitDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.core.progress import bar as progress_bar
from regmix_ds.core.settings import Invalid
from regmix_ds.regress.fit import FittedModel, fit_regressor
from regmix_ds.regress.tables import domain_mismatch, prior_by_domain


@dataclass(frozen=True)
class Simulation:
    """The chosen mixture and everything best.json records about how it was chosen."""

    mixture: Mixture
    predicted: float
    weight_intervals: Mapping[str, tuple[float, float]]
    predicted_interval: tuple[float, float] | None
    top_k_predicted: np.ndarray
    caps: Mapping[str, float]
    prior: Mapping[str, float]
    drawn: int
    in_support: int


def log_spaced_strengths(settings: SimulateConfig) -> np.ndarray:
    """`strengths` Dirichlet strengths from strength_min to strength_max, evenly spaced in log."""
    return np.geomspace(settings.strength_min, settings.strength_max, settings.strengths)


def draw_candidates(prior: np.ndarray, settings: SimulateConfig, rng: np.random.Generator) -> np.ndarray:
    """`settings.candidates` rows from Dirichlet(prior x strength), split evenly among strengths."""
    strengths = log_spaced_strengths(settings)
    counts = np.full(len(strengths), settings.candidates // len(strengths))
    counts[: settings.candidates % len(strengths)] += 1
    # Dirichlet needs every concentration > 0; a zero prior still draws (almost) nothing.
    alpha = np.maximum(prior, 1e-12)
    blocks = [rng.dirichlet(alpha * s, size=int(n)) for s, n in zip(strengths, counts) if n]
    candidates = np.concatenate(blocks)
    # Extremely small concentrations can underflow to an all-zero row: drop those.
    return candidates[np.isfinite(candidates).all(axis=1) & (candidates.sum(axis=1) > 0)]


def domain_caps(fitted: FittedModel, settings: SimulateConfig, manifest: Manifest | None) -> dict[str, float]:
    """Each domain's largest allowed weight: training support (or explicit cap), token budget."""
    unknown = sorted(set(settings.max_weight) - set(fitted.domains))
    if unknown:
        raise Invalid(SimulateConfig, "max_weight", f"unknown domain(s) {', '.join(unknown)}")
    caps = {d: float(settings.max_weight.get(d, fitted.support_max[d])) for d in fitted.domains}
    if settings.target_tokens is None:
        return caps
    if manifest is None:
        raise Invalid(SimulateConfig, "target_tokens", "token budgets need --manifest (per-domain token counts)")
    missing = [d for d in fitted.domains if d not in manifest.train]
    if missing:
        raise RegmixError(manifest.path, f"no token count for domain(s) {', '.join(missing)}")
    for d in fitted.domains:
        budget = settings.max_epochs * manifest.train[d].tokens / settings.target_tokens
        caps[d] = min(caps[d], budget)
    return caps


def resolve_prior(
    fitted: FittedModel, prior_path: str | Path | None, manifest: Manifest | None
) -> tuple[dict[str, float], str]:
    """The prior over the model's domains (renormalised) and where it came from."""
    if prior_path is not None:
        prior, where = prior_by_domain(prior_path), str(prior_path)
    elif manifest is not None:
        prior, where = manifest.token_prior(), str(manifest.path)
    else:
        weights, _ = fitted.training_data()
        prior, where = dict(zip(fitted.domains, weights.mean(axis=0).tolist())), "mean training mixture"
    mismatch = domain_mismatch(fitted.domains, prior)
    if mismatch:
        raise RegmixError(where, f"prior does not match the model's domains ({mismatch})")
    if sum(prior[d] for d in fitted.domains) <= 0:
        raise RegmixError(where, "prior is all zero")
    return dict(Mixture.from_weights({d: prior[d] for d in fitted.domains}, renormalize=True,
                                     source=where).weights), where


def _interval(values: np.ndarray, confidence: float) -> np.ndarray:
    tail = (1 - confidence) / 2
    return np.quantile(values, [tail, 1 - tail], axis=0)


def simulate(
    fitted: FittedModel,
    prior: Mapping[str, float],
    settings: SimulateConfig,
    manifest: Manifest | None = None,
    progress: bool = True,
) -> Simulation:
    """Draw, constrain, score and average; then bootstrap the intervals."""
    domains = fitted.domains
    caps = domain_caps(fitted, settings, manifest)
    training = fitted.training_data() if settings.bootstrap else None
    drawn = draw_candidates(np.array([prior[d] for d in domains]), settings, np.random.default_rng([settings.seed, 0]))
    candidates = drawn[(drawn <= np.array([caps[d] for d in domains])).all(axis=1)]
    if len(candidates) < settings.top_k:
        raise Invalid(
            SimulateConfig, "candidates",
            f"only {len(candidates)} of {len(drawn)} candidates lie inside the allowed region, fewer than "
            f"top_k={settings.top_k}: draw more candidates or loosen --max-weight/--max-epochs",
        )
    best = fitted.model.lowest_k(candidates, settings.top_k, progress=progress)
    chosen = candidates[best.indices].mean(axis=0)
    chosen /= chosen.sum()
    predicted = float(fitted.model.predict(chosen[None, :])[0])
    weight_intervals: dict[str, tuple[float, float]] = {}
    predicted_interval = None
    if settings.bootstrap:
        replicate_weights, replicate_predictions = _bootstrap(fitted, training, candidates, chosen, settings, progress)
        bounds = _interval(replicate_weights, settings.confidence)
        weight_intervals = {d: (float(bounds[0, i]), float(bounds[1, i])) for i, d in enumerate(domains)}
        low, high = _interval(replicate_predictions, settings.confidence)
        predicted_interval = (float(low), float(high))
    return Simulation(
        mixture=Mixture.from_weights(dict(zip(domains, chosen.tolist())), renormalize=True, source="simulate"),
        predicted=predicted,
        weight_intervals=weight_intervals,
        predicted_interval=predicted_interval,
        top_k_predicted=best.scores,
        caps=caps,
        prior=dict(prior),
        drawn=len(drawn),
        in_support=len(candidates),
    )


def _bootstrap(fitted, training, candidates: np.ndarray, chosen: np.ndarray, settings: SimulateConfig, progress: bool):
    """Per refit on resampled runs: the mixture it would choose, and its prediction for `chosen`."""
    weights, target = training
    replicate_weights, replicate_predictions = [], []
    refits = progress_bar(range(settings.bootstrap), desc="bootstrap refits", unit="refit", disable=not progress)
    for replicate in refits:
        rows = np.random.default_rng([settings.seed, 1 + replicate]).integers(0, len(target), len(target))
        model = fit_regressor(weights[rows], target[rows], fitted.settings, fitted.trees)
        top = model.lowest_k(candidates, settings.top_k)
        mixture = candidates[top.indices].mean(axis=0)
        replicate_weights.append(mixture / mixture.sum())
        replicate_predictions.append(float(model.predict(chosen[None, :])[0]))
    return np.array(replicate_weights), np.array(replicate_predictions)


def best_json_metadata(
    result: Simulation, fitted: FittedModel, settings: SimulateConfig, inputs: Mapping[str, Any], prior_source: str
) -> dict:
    """Everything best.json holds next to the weights."""
    intervals: dict[str, Any] = {"confidence": settings.confidence, "bootstrap": settings.bootstrap}
    if result.predicted_interval is not None:
        intervals["weights"] = {d: list(bounds) for d, bounds in result.weight_intervals.items()}
        intervals["predicted_target"] = list(result.predicted_interval)
    scores = result.top_k_predicted
    return {
        "predicted_target": result.predicted,
        "target": fitted.target.label,
        "target_terms": fitted.target.to_json(),
        "intervals": intervals,
        "top_k": {"k": settings.top_k, "best": float(scores.min()), "mean": float(scores.mean()),
                  "worst": float(scores.max())},
        "candidates": {"drawn": result.drawn, "in_support": result.in_support},
        "caps": dict(result.caps),
        "prior": dict(result.prior),
        "prior_source": prior_source,
        "settings": dataclasses.asdict(settings),
        "model": {"dir": str(Path(fitted.path).resolve()), "regressor": fitted.model.regressor, "trees": fitted.trees},
        "inputs": dict(inputs),
    }


def run_simulate(
    model_dir: str | Path,
    out: str | Path,
    settings: SimulateConfig,
    prior_path: str | Path | None = None,
    manifest_path: str | Path | None = None,
    deepspeed_config: str | Path | None = None,
    out_config: str | Path | None = None,
    progress: bool = True,
) -> Simulation:
    """The `simulate` stage: every input is read and checked before anything is written."""
    if (deepspeed_config is None) != (out_config is None):
        raise RegmixError("--out-config", "give --deepspeed-config and --out-config together")
    fitted = FittedModel.load(model_dir)
    manifest = Manifest.load(manifest_path) if manifest_path is not None else None
    ds_config = load_ds_config(deepspeed_config) if deepspeed_config is not None else None
    prior, prior_source = resolve_prior(fitted, prior_path, manifest)
    sidecar = FitDir(Path(model_dir)).sidecar
    inputs = {"model": {"path": str(sidecar.resolve()), "sha256": file_hash(sidecar)}}
    inputs.update({f"training_{role}": dict(entry) for role, entry in fitted.inputs.items()})
    for role, path in (("prior", prior_path), ("manifest", manifest_path), ("deepspeed_config", deepspeed_config)):
        if path is not None:
            inputs[role] = {"path": str(Path(path).resolve()), "sha256": file_hash(path)}
    result = simulate(fitted, prior, settings, manifest, progress)
    result.mixture.save(out, **best_json_metadata(result, fitted, settings, inputs, prior_source))
    if ds_config is not None:
        write_json_atomic(out_config, with_mixture(ds_config.settings, result.mixture, source=str(out)))
    return result


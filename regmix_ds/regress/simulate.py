"""Simulate: score a million candidate mixtures with the fitted surrogate and propose the best mixture.

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
3. Guardrails (`guard`, needs `fit.all_losses`): a guarded loss's prediction may exceed its
   prediction under the reference mixture (`guard_reference`, the natural one by default) by at
   most its tolerance; candidates that break one are dropped. Too few left is an error naming
   the guardrail, never a relaxed one. best.json says which guardrails bind: those the mixture
   chosen without any guardrail would break.
4. The proposal (`regress.proposer`): `topk` averages the k candidates with the lowest
   predicted target (for trees found exactly without scoring every tree of every candidate:
   `regress.treescore`); for a smooth surrogate `optimize` minimises the prediction (plus an
   optional KL pull towards the prior) over the same region. best.json holds both answers
   when both apply, and `proposer` says which is the mixture.
5. Confidence: `bootstrap` refits on resampled proxy runs (drawn with replacement; same
   hyperparameters, same candidates, same guard models) each propose a mixture the same way
   and predict the target of the chosen mixture. The refits' answers become intervals by the
   `interval` method (`regress.intervals`); their measured coverage is in the README.

The prior is a prior file, the manifest's token shares, or else the mean training mixture.
The result is best.json (weights, predicted target, intervals, proposals, guardrails,
settings, input hashes) and, given a DeepSpeed config, a copy of it with the mixture in its
`"regmix"` block (`regmix_ds.dsconfig`: the input is checked the way train.py will check it).
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
from regmix_ds.core.files import OutputSet, check_outputs, file_hash
from regmix_ds.core.layout import FitDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.core.progress import bar as progress_bar
from regmix_ds.core.settings import Invalid
from regmix_ds.regress.fit import FittedModel
from regmix_ds.regress.intervals import bootstrap_interval, weight_intervals
from regmix_ds.regress.proposer import SLACK, Guard, Proposal, Region, meets_all, minimise, top_k
from regmix_ds.regress.surrogates import Surrogate
from regmix_ds.regress.tables import domain_mismatch, prior_by_domain, runs_per_round


@dataclass(frozen=True)
class Simulation:
    """The chosen mixture and everything best.json records about how it was chosen."""

    mixture: Mixture
    predicted: float
    weight_intervals: Mapping[str, tuple[float, float]]
    predicted_interval: tuple[float, float] | None
    proposals: Mapping[str, Proposal]
    """Every proposer's answer (`topk`, and `optimize` for a smooth surrogate)."""
    proposer: str
    caps: Mapping[str, float]
    prior: Mapping[str, float]
    drawn: int
    in_support: int
    guardrails: Mapping[str, Any] | None = None
    """What best.json says about the guardrails (None without any)."""


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


def resolve_reference(fitted: FittedModel, settings: SimulateConfig, prior: Mapping[str, float]) -> dict[str, float]:
    """The mixture guardrails compare with: the prior for `natural`, else the named mixture file."""
    if settings.guard_reference == "natural":
        return dict(prior)
    mixture = Mixture.load(settings.guard_reference)
    mixture.check_domains(fitted.domains, settings.guard_reference)
    return dict(mixture.weights)


def build_guards(fitted: FittedModel, settings: SimulateConfig, reference: Mapping[str, float]) -> tuple[Guard, ...]:
    """One guard per `guard` entry, from the loss models `fit.all_losses` saved."""
    missing = [loss for loss in settings.guard if loss not in fitted.losses]
    if missing:
        known = f"it has models of {', '.join(fitted.losses)}" if fitted.losses else "fit with --all-losses"
        raise Invalid(SimulateConfig, "guard", f"no model of loss {', '.join(missing)} in {fitted.path} ({known})")
    vector = np.array([[reference[d] for d in fitted.domains]])
    guards = []
    for loss, tolerance in settings.guard.items():
        model = fitted.loss_model(loss).model
        guards.append(Guard(loss, model, float(model.predict(vector)[0]), tolerance))
    return tuple(guards)


def propose(model: Surrogate, candidates: np.ndarray, region: Region, settings: SimulateConfig,
            progress: bool = False, only: str | None = None) -> dict[str, Proposal]:
    """The top-k average and, for a smooth surrogate, the optimiser's answer (started from the top k).

    `only="topk"` skips the optimiser (the top-k average is its start, so it is always computed).
    """
    found = {"topk": top_k(model, candidates, settings.top_k, region.guards, progress)}
    if model.smooth and only != "topk":
        starts = [found["topk"].weights, *found["topk"].leaders]
        found["optimize"] = minimise(model, region, starts, settings.kl_weight)
    return found


def simulate(
    fitted: FittedModel,
    prior: Mapping[str, float],
    settings: SimulateConfig,
    manifest: Manifest | None = None,
    progress: bool = True,
    reference: Mapping[str, float] | None = None,
) -> Simulation:
    """Draw, constrain, guard, propose; then bootstrap the intervals (`reference`: for the guardrails)."""
    domains = fitted.domains
    if settings.proposer == "optimize" and not fitted.model.smooth:
        raise Invalid(SimulateConfig, "proposer", f"optimize needs a smooth surrogate (linear, loglinear, gp); "
                      f"{fitted.path} holds {fitted.model.regressor}")
    caps = domain_caps(fitted, settings, manifest)
    prior_vector = np.array([prior[d] for d in domains])
    region = Region(np.array([caps[d] for d in domains]),
                    build_guards(fitted, settings, reference or prior) if settings.guard else (), prior_vector)
    training = fitted.training_data() if settings.bootstrap else None
    drawn = draw_candidates(prior_vector, settings, np.random.default_rng([settings.seed, 0]))
    candidates = drawn[(drawn <= region.caps).all(axis=1)]
    if len(candidates) < settings.top_k:
        raise Invalid(
            SimulateConfig, "candidates",
            f"only {len(candidates)} of {len(drawn)} candidates lie inside the allowed region, fewer than "
            f"top_k={settings.top_k}: draw more candidates or loosen --max-weight/--max-epochs",
        )
    allowed = guarded_candidates(candidates, region, settings)
    proposals = propose(fitted.model, allowed, region, settings, progress)
    chosen = proposals[settings.proposer]
    weight_bounds: dict[str, tuple[float, float]] = {}
    predicted_interval = None
    if settings.bootstrap:
        low, high, predicted_interval = bootstrap_intervals(fitted.model, training, allowed, region, chosen, settings,
                                                            progress)
        weight_bounds = {d: (float(low[i]), float(high[i])) for i, d in enumerate(domains)}
    return Simulation(
        mixture=Mixture.from_weights(dict(zip(domains, chosen.weights.tolist())), renormalize=True, source="simulate"),
        predicted=chosen.predicted,
        weight_intervals=weight_bounds,
        predicted_interval=predicted_interval,
        proposals=proposals,
        proposer=settings.proposer,
        caps=caps,
        prior=dict(prior),
        drawn=len(drawn),
        in_support=len(candidates),
        guardrails=guardrail_report(fitted, candidates, region, settings, chosen, reference or prior)
        if region.guards else None,
    )


def guarded_candidates(candidates: np.ndarray, region: Region, settings: SimulateConfig) -> np.ndarray:
    """The candidates that meet every guard; fewer than top_k of them is an error, not a relaxed guard."""
    if not region.guards:
        return candidates
    allowed = candidates[meets_all(region.guards, candidates)]
    if len(allowed) < settings.top_k:
        limits = ", ".join(f"{g.loss} <= {g.limit:.4g}" for g in region.guards)
        raise Invalid(SimulateConfig, "guard",
                      f"only {len(allowed)} of {len(candidates)} candidates inside the caps meet every guardrail "
                      f"({limits}), fewer than top_k={settings.top_k}: loosen the tolerances or draw more candidates")
    return allowed


def guardrail_report(fitted: FittedModel, candidates: np.ndarray, region: Region, settings: SimulateConfig,
                     chosen: Proposal, reference: Mapping[str, float]) -> dict[str, Any]:
    """Each guard's limit and value at the chosen mixture, and whether it binds: whether the mixture the same
    proposer chooses without any guardrail would break it."""
    free = propose(fitted.model, candidates, dataclasses.replace(region, guards=()), settings,
                   only=settings.proposer)[settings.proposer]
    guards = {}
    for guard in region.guards:
        at_chosen, at_free = guard.model.predict(np.array([chosen.weights, free.weights]))
        guards[guard.loss] = {"tolerance": guard.tolerance, "reference": guard.reference, "limit": guard.limit,
                              "predicted": float(at_chosen), "binds": bool(at_free > guard.limit + SLACK)}
    return {"reference": settings.guard_reference, "reference_weights": dict(reference), "guards": guards,
            "unguarded": free.to_json(fitted.domains)}


def bootstrap_replicates(model: Surrogate, training: tuple[np.ndarray, np.ndarray], candidates: np.ndarray,
                         region: Region, chosen: np.ndarray, settings: SimulateConfig,
                         progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per refit on resampled runs: the mixture its proposer would choose, and its prediction for `chosen`."""
    weights, target = training
    replicate_weights, replicate_predictions = [], []
    refits = progress_bar(range(settings.bootstrap), desc="bootstrap refits", unit="refit", disable=not progress)
    for replicate in refits:
        rows = np.random.default_rng([settings.seed, 1 + replicate]).integers(0, len(target), len(target))
        refit = model.refit(weights[rows], target[rows])
        proposal = propose(refit, candidates, region, settings, only=settings.proposer)[settings.proposer]
        replicate_weights.append(proposal.weights)
        replicate_predictions.append(float(refit.predict(chosen[None, :])[0]))
    return np.array(replicate_weights), np.array(replicate_predictions)


def bootstrap_intervals(model: Surrogate, training: tuple[np.ndarray, np.ndarray], candidates: np.ndarray,
                        region: Region, chosen: Proposal, settings: SimulateConfig,
                        progress: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(low weights, high weights, predicted-target interval) by the `interval` method."""
    replicate_weights, replicate_predictions = bootstrap_replicates(model, training, candidates, region,
                                                                    chosen.weights, settings, progress)
    low, high = weight_intervals(chosen.weights, replicate_weights, settings.confidence, settings.interval,
                                 region.caps)
    p_low, p_high = bootstrap_interval(chosen.predicted, replicate_predictions, settings.confidence,
                                       settings.interval)
    return low, high, (float(p_low), float(p_high))


def best_json_metadata(
    result: Simulation, fitted: FittedModel, settings: SimulateConfig, inputs: Mapping[str, Any], prior_source: str
) -> dict:
    """Everything best.json holds next to the weights."""
    intervals: dict[str, Any] = {"confidence": settings.confidence, "bootstrap": settings.bootstrap,
                                 "method": settings.interval}
    if result.predicted_interval is not None:
        intervals["weights"] = {d: list(bounds) for d, bounds in result.weight_intervals.items()}
        intervals["predicted_target"] = list(result.predicted_interval)
    metadata = {
        "predicted_target": result.predicted,
        "target": fitted.target.label,
        "target_terms": fitted.target.to_json(),
        "intervals": intervals,
        "proposer": result.proposer,
        "proposals": {name: proposal.to_json(fitted.domains) for name, proposal in result.proposals.items()},
        "top_k": result.proposals["topk"].details,
        "candidates": {"drawn": result.drawn, "in_support": result.in_support},
        "caps": dict(result.caps),
        "prior": dict(result.prior),
        "prior_source": prior_source,
        "settings": dataclasses.asdict(settings),
        "model": {"dir": str(Path(fitted.path).resolve()), "regressor": fitted.model.regressor, "trees": fitted.trees},
        "inputs": dict(inputs),
    }
    if "results" in fitted.inputs:
        # The runs of every swarm round the fit used: {round: runs} (a round 1 alone before `--next-round`).
        metadata["rounds"] = {str(r): n for r, n in runs_per_round(fitted.inputs["results"]["path"]).items()}
    if result.guardrails is not None:
        metadata["guardrails"] = result.guardrails
    return metadata


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
    reference = resolve_reference(fitted, settings, prior) if settings.guard else None
    sidecar = FitDir(Path(model_dir)).sidecar
    inputs = {"model": {"path": str(sidecar.resolve()), "sha256": file_hash(sidecar)}}
    inputs.update({f"training_{role}": dict(entry) for role, entry in fitted.inputs.items()})
    paths = (("prior", prior_path), ("manifest", manifest_path), ("deepspeed_config", deepspeed_config),
             ("guard_reference", settings.guard_reference if reference and settings.guard_reference != "natural"
              else None))
    for role, path in paths:
        if path is not None:
            inputs[role] = {"path": str(Path(path).resolve()), "sha256": file_hash(path)}
    outputs = [Path(out)] + ([Path(out_config)] if out_config is not None else [])
    input_paths = [sidecar] + [path for _, path in paths if path is not None]
    check_outputs(outputs, input_paths)  # before the scoring, not after it
    result = simulate(fitted, prior, settings, manifest, progress, reference)
    best = result.mixture.to_json(**best_json_metadata(result, fitted, settings, inputs, prior_source))
    # best.json and the DeepSpeed config carrying its weights are one set: killed at any instant,
    # both are the old answer or both the new one, never two different mixtures.
    with OutputSet(outputs, inputs=input_paths) as staged:
        staged.write_json(Path(out), best)
        if ds_config is not None:
            staged.write_json(Path(out_config), with_mixture(ds_config.settings, result.mixture, source=str(out)))
    return result

"""Which surrogate chooses best on the demo corpus: each one's mixture, trained and measured.

Run on a finished demo (`bash launchers/demo.sh DIR`: its 32 proxies and results.csv). For each
surrogate, a fit with the demo's fit settings (`fit.regressor` replaced) into
DIR/work/surrogates/<surrogate>/, then simulate with the demo's simulate settings and manifest
(both proposers for a smooth surrogate), then every proposed mixture trained as one more proxy
with the swarm's settings (`pipeline.verify.train_verification_runs`, the runs `regmix-ds verify`
trains; finished ones are reused) and its target loss measured. Also: which surrogate
`--regressor auto` keeps (cross-validated Spearman inside the 32 runs), and the natural mixture's
measured loss for comparison. The last line is one JSON object.

    python benchmarks/demo_surrogates.py DIR [--jobs 2]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.files import read_json
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline.verify import train_verification_runs
from regmix_ds.regress.fit import fit
from regmix_ds.regress.simulate import run_simulate
from regmix_ds.regress.surrogates import FAMILY
from regmix_ds.regress.tables import Target, read_results


def fit_and_simulate(experiment: ExperimentConfig, regressor: str, out: Path) -> tuple[dict, dict]:
    """The surrogate's fit report and best.json (topk proposer; the optimiser's answer inside it)."""
    settings = dataclasses.replace(experiment.fit, regressor=regressor)
    report = fit(read_results(experiment.work.results), Target.parse(settings.target), settings, out / "fit")
    run_simulate(out / "fit", out / "best.json", experiment.simulate, manifest_path=experiment.work.manifest,
                 progress=False)
    return report, read_json(out / "best.json")


def proposed_mixtures(regressor: str, best: dict, domains) -> dict[str, Mixture]:
    """`<surrogate>-<proposer>` -> its mixture, for every proposal best.json holds."""
    return {f"{regressor}-{name}": Mixture.from_weights({d: proposal["weights"][d] for d in domains},
                                                       renormalize=True, source=f"{regressor} {name}")
            for name, proposal in best["proposals"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a finished demo directory (its exp.yaml)")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()

    experiment = ExperimentConfig.load(args.dir / "exp.yaml")
    manifest = Manifest.load(experiment.work.manifest)
    target = Target.parse(experiment.fit.target)
    rows, mixtures = {}, {}
    for regressor in FAMILY:
        report, best = fit_and_simulate(experiment, regressor, experiment.work.root / "surrogates" / regressor)
        cv = report["cross_validation"]["metrics"][target.label]
        for name, mixture in proposed_mixtures(regressor, best, manifest.domains).items():
            mixtures[name] = mixture
            rows[name] = {"cv_spearman": round(cv["spearman"], 4),
                          "predicted": round(best["proposals"][name.split("-", 1)[1]]["predicted_target"], 4),
                          "weights": {d: round(w, 3) for d, w in mixture.weights.items()}}
    mixtures["natural"] = Mixture.from_weights(manifest.token_prior(), source="natural")
    rows["natural"] = {"weights": {d: round(w, 3) for d, w in mixtures["natural"].weights.items()}}
    runs = train_verification_runs(experiment, mixtures, args.jobs)
    for name, run in runs.items():
        losses = read_json(run.result)["valid_loss"]
        rows[name]["measured"] = round(sum(c * float(losses[n]) for n, c in target.terms), 4)
    auto = fit(read_results(experiment.work.results), target, dataclasses.replace(experiment.fit, regressor="auto"),
               experiment.work.root / "surrogates" / "auto" / "fit")
    for name, row in sorted(rows.items(), key=lambda item: item[1]["measured"]):
        print(f"{name:20s} measured {row['measured']:.4f}  predicted {row.get('predicted', float('nan')):.4f}  "
              f"cv Spearman {row.get('cv_spearman', float('nan')):.4f}  {row['weights']}")
    print(json.dumps({"auto_choice": auto["regressor"], "target": target.label, "mixtures": rows}))


if __name__ == "__main__":
    main()

"""The verify stage: does the chosen mixture beat the alternatives when actually trained?

The regression only predicts. Here the chosen mixture (best.json) and the natural one (each
domain's share of the training tokens) are trained as two more proxies with exactly the
swarm's settings, optionally with a reference mixture too (the synthetic corpus's
`target_composition.json`), and their measured target loss is set beside the best and the median swarm
member's. Output: `verify.json` and `summary.md` (a markdown table) in the report folder.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import OutputSet, read_json
from regmix_ds.core.layout import RunDir
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline.oracle import load_result
from regmix_ds.pipeline.proxies import run_proxy_processes
from regmix_ds.regress.tables import Target, read_results


@dataclass(frozen=True)
class Row:
    """One line of the verification table: a mixture, its measured target loss, and a note."""

    name: str
    target_loss: float
    mixture: dict[str, float]
    note: str = ""
    regret: float | None = None
    """Its target loss minus the oracle search's best (with an oracle)."""


def verification_mixtures(experiment: ExperimentConfig, reference: Path | None) -> dict[str, Mixture]:
    """The mixtures to train: chosen (best.json), natural (token shares), and the reference, named
    by its file (`target_composition.json` is the row "target composition")."""
    manifest = Manifest.load(experiment.work.manifest)
    mixtures = {
        "chosen": Mixture.load(experiment.work.best),
        "natural": Mixture.from_weights(manifest.token_prior(), source=experiment.work.manifest),
    }
    if reference is not None:
        label = reference.stem.replace("_", " ")
        mixtures[label if label not in mixtures else "reference"] = Mixture.load(reference)
    for name, mixture in mixtures.items():
        mixture.check_domains(manifest.domains, f"{name} mixture")
    return mixtures


def verify(experiment: ExperimentConfig, out_dir: Path, reference: Path | None = None, jobs: int = 2,
           oracle: Path | None = None) -> list[Row]:
    """Train the verification proxies (finished ones are reused) and compare them with the swarm
    (and, given an oracle search's result, each one's regret against its best loss)."""
    if not experiment.fit.target:
        raise RegmixError(f"{experiment.path}: fit.target", "required: the loss the chosen mixture is judged by")
    target = Target.parse(experiment.fit.target, "fit.target")
    answer = load_result(oracle) if oracle is not None else None
    runs = train_verification_runs(experiment, verification_mixtures(experiment, reference), jobs)
    rows = verification_rows(experiment, runs, target)
    if answer is not None:
        rows = with_regret(rows, answer)
    _write(out_dir, rows, experiment.fit.target)
    return rows


def with_regret(rows: list[Row], answer: dict) -> list[Row]:
    """Each row's regret against the oracle's best measured loss, and the oracle's own row."""
    best = float(answer["target_loss"])
    scored = [dataclasses.replace(row, regret=row.target_loss - best,
                                  note=f"{row.note}; regret {row.target_loss - best:+.4f}".lstrip("; "))
              for row in rows]
    oracle_row = Row("oracle search", best, dict(answer["weights"]), f"best of {answer['proxies']} proxies", 0.0)
    return scored + [oracle_row]


def train_verification_runs(experiment: ExperimentConfig, mixtures: dict[str, Mixture], jobs: int) -> dict[str, RunDir]:
    """Train each mixture as a proxy with the swarm's settings, `jobs` at a time; finished ones are reused."""
    runs, todo = {}, {}
    for name, mixture in mixtures.items():
        # Keyed by content: a new best.json gets a new run instead of the old one's result.
        run = experiment.work.verify_run(name, mixture.content_hash())
        mixture_file = run.path.with_suffix(".json")
        mixture.save(mixture_file)
        runs[name] = run
        if not run.is_done():
            todo[name] = (run.log, ["--mixture", str(mixture_file), "--out", str(run.path)])
    failed = run_proxy_processes(experiment, todo, jobs, "verify")
    if failed:
        raise RegmixError(experiment.work.verify,
                          f"verification run(s) failed: {', '.join(failed)}; see their proxy.log")
    return runs


def verification_rows(experiment: ExperimentConfig, runs: dict[str, RunDir], target: Target) -> list[Row]:
    """The trained mixtures' measured target losses, then the best and the median swarm member's."""
    return [_trained_row(name, run.result, target) for name, run in runs.items()] + _swarm_rows(experiment, target)


def _trained_row(name: str, result_path: Path, target: Target) -> Row:
    result = read_json(result_path)
    missing = [n for n, _ in target.terms if n not in result["valid_loss"]]
    if missing:
        raise RegmixError(result_path, f"no validation loss for {', '.join(missing)}")
    loss = sum(c * float(result["valid_loss"][n]) for n, c in target.terms)
    return Row(name, loss, result["mixture"])


def _swarm_rows(experiment: ExperimentConfig, target: Target) -> list[Row]:
    """The best swarm member and the median one: with an even swarm, the lower of the two middle
    members, each row with that member's own loss and mixture."""
    table = read_results(experiment.work.results)
    losses = target.values(table)
    order = sorted(range(len(losses)), key=lambda i: losses[i])
    best, median = order[0], order[(len(order) - 1) // 2]

    def row(name: str, position: int, note: str) -> Row:
        mixture = dict(zip(table.domains, map(float, table.weights[position])))
        return Row(name, float(losses[position]), mixture, note)

    lower = " (the lower of the two middle members)" if len(order) % 2 == 0 else ""
    return [
        row("best swarm member", best, f"proxy {table.index[best]}"),
        row("median swarm member", median, f"proxy {table.index[median]} of {len(losses)}{lower}"),
    ]


def _write(out_dir: Path, rows: list[Row], target_name: str) -> None:
    domains = list(rows[0].mixture)
    header = f"| mixture | {target_name} loss | " + " | ".join(domains) + " | note |"
    lines = [header, "|" + "---|" * (len(domains) + 3)]
    for row in sorted(rows, key=lambda r: r.target_loss):
        weights = " | ".join(f"{row.mixture.get(d, 0.0):.3f}" for d in domains)
        lines.append(f"| {row.name} | {row.target_loss:.4f} | {weights} | {row.note} |")
    table = "\n".join(lines)
    print(table)
    with OutputSet([out_dir / "summary.md", out_dir / "verify.json"]) as out:
        out.write_text(out_dir / "summary.md", f"# RegMix verification\n\n{table}\n")
        out.write_json(out_dir / "verify.json", [row.__dict__ for row in rows])

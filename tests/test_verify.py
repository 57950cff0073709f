"""verify's comparison on its own: the trained mixtures' measured target losses next to the swarm's
best and median member, from result files written here (nothing is trained)."""
import csv

import pytest

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import write_json_atomic
from regmix_ds.core.layout import RunDir
from regmix_ds.pipeline.verify import verification_rows, verify
from regmix_ds.regress.tables import Target

DOMAINS = ("news", "code")


def write_results(path, losses: dict[int, tuple[float, float]]) -> None:
    """A results.csv of done runs: index -> (target loss, news weight)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "status", "w:news", "w:code", "loss:target", "loss:news", "tokens", "wall_seconds"])
        for index, (loss, news) in losses.items():
            writer.writerow([index, "done", news, 1 - news, loss, loss + 1, 512, 1.0])


def trained(tmp_path, name: str, target_loss: float, news: float) -> RunDir:
    run = RunDir(tmp_path / name)
    write_json_atomic(run.result, {"mixture": {"news": news, "code": 1 - news},
                                   "valid_loss": {"target": target_loss, "news": 9.0}})
    return run


@pytest.fixture
def experiment(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("work_dir: work\ndata: {domains: {news: {paths: [n.jsonl]}, code: {paths: [c.jsonl]}}}\n"
                      "fit: {target: target}\n")
    (tmp_path / "work").mkdir()
    return ExperimentConfig.load(config)


@pytest.mark.parametrize("swarm", [
    {1: (3.5, 0.1), 2: (3.1, 0.4), 3: (3.3, 0.2), 4: (3.9, 0.7)},  # even: the lower middle member is proxy 3
    {1: (3.5, 0.1), 2: (3.1, 0.4), 3: (3.3, 0.2)},                 # odd: the middle member is proxy 3
])
def test_rows_carry_each_mixture_own_measured_loss(experiment, tmp_path, swarm):
    write_results(experiment.work.results, swarm)
    runs = {"chosen": trained(tmp_path, "chosen", 3.0, 0.45), "natural": trained(tmp_path, "natural", 3.4, 0.5)}
    rows = {row.name: row for row in verification_rows(experiment, runs, Target.parse("target"))}
    assert rows["chosen"].target_loss == 3.0 and rows["chosen"].mixture == {"news": 0.45, "code": 0.55}
    assert rows["natural"].target_loss == 3.4
    best = min(swarm, key=lambda i: swarm[i][0])
    assert rows["best swarm member"].target_loss == swarm[best][0] and rows["best swarm member"].note == f"proxy {best}"
    ranked = sorted(swarm, key=lambda i: swarm[i][0])
    median = ranked[(len(ranked) - 1) // 2]
    row = rows["median swarm member"]
    assert row.note.startswith(f"proxy {median} of {len(swarm)}")
    # The median row is one real member: its own loss and its own mixture, never a mean of two.
    assert row.target_loss == swarm[median][0]
    assert row.mixture["news"] == pytest.approx(swarm[median][1])


def test_a_weighted_target_sums_the_measured_losses(experiment, tmp_path):
    write_results(experiment.work.results, {1: (3.5, 0.1), 2: (3.1, 0.4)})
    runs = {"chosen": trained(tmp_path, "chosen", 3.0, 0.45)}
    rows = verification_rows(experiment, runs, Target.parse("target=0.5,news=0.5"))
    assert rows[0].target_loss == pytest.approx(0.5 * 3.0 + 0.5 * 9.0)
    assert rows[1].target_loss == pytest.approx(0.5 * 3.1 + 0.5 * 4.1)


def test_a_result_without_the_target_loss_is_one_line(experiment, tmp_path):
    write_results(experiment.work.results, {1: (3.5, 0.1)})
    run = RunDir(tmp_path / "chosen")
    write_json_atomic(run.result, {"mixture": {"news": 1.0, "code": 0.0}, "valid_loss": {"news": 3.0}})
    with pytest.raises(RegmixError, match="no validation loss for target"):
        verification_rows(experiment, {"chosen": run}, Target.parse("target"))


def test_verify_needs_a_target(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text("work_dir: work\ndata: {domains: {news: {paths: [n.jsonl]}}}\n")
    with pytest.raises(RegmixError, match="fit.target: required"):
        verify(ExperimentConfig.load(config), tmp_path / "report")
    assert not (tmp_path / "report").exists()


def test_verify_killed_while_writing_leaves_the_old_pair_or_the_new_one(experiment, tmp_path):
    """SIGKILL at every fault point of writing summary.md and verify.json (nothing retrained: the
    verification runs are results written here): the two always describe the same rows."""
    from regmix_ds.pipeline import verify as verify_module
    from tests.kills import kill_everywhere

    write_results(experiment.work.results, {1: (3.5, 0.1), 2: (3.1, 0.4), 3: (3.3, 0.2)})
    out = tmp_path / "report"

    def rows(chosen_loss):
        runs = {"chosen": trained(tmp_path, f"chosen-{chosen_loss}", chosen_loss, 0.45)}
        return verification_rows(experiment, runs, Target.parse("target"))

    verify_module._write(out, rows(3.0), "target")  # the previous verification
    old = {path: path.read_bytes() for path in out.iterdir()}

    def reset():
        for path in out.iterdir():
            path.unlink()
        for path, content in old.items():
            path.write_bytes(content)

    new_rows = rows(2.9)
    points = kill_everywhere(lambda: verify_module._write(out, new_rows, "target"), list(old), reset)
    assert points >= 9  # two staged files, two journals, the marker, two renames

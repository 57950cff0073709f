import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.pipeline.proxies import format_ranges, parse_ranges, sbatch_line, train_config
from tests.helpers import TIMEOUT, logged_steps, proxy_dir, run_cli, wait_for_steps


@pytest.mark.parametrize("indices, text", [([1, 2, 3, 7, 9, 10], "1-3,7,9-10"), ([5], "5"), ([3, 1, 2, 2], "1-3")])
def test_index_ranges_round_trip(indices, text):
    assert format_ranges(indices) == text
    assert parse_ranges(text, "--indices") == sorted(set(indices))


@pytest.mark.parametrize("text", ["", "a", "3-1", "1-2-3", "1,,2"])
def test_bad_index_range_is_an_error(text):
    with pytest.raises(RegmixError, match="--indices: not an index range"):
        parse_ranges(text, "--indices")


def test_every_proxy_gets_the_same_settings_but_its_mixture(tiny_experiment):
    experiment = ExperimentConfig.load(tiny_experiment(n=3))
    first, second = train_config(experiment, 1), train_config(experiment, 2)
    assert first.mixture.endswith("swarm/n1.json") and second.mixture.endswith("swarm/n2.json")
    assert first.out != second.out and first.resume == "auto"
    differing = {k for k in vars(first) if getattr(first, k) != getattr(second, k)}
    assert differing == {"mixture", "out"}
    line = sbatch_line(experiment, [1, 2, 3], throttle=8)
    assert line == f"sbatch --array=1-3%8 slurm/proxies.sh {experiment.path}"


def test_proxy_trains_once_then_skips(tiny_experiment):
    config = tiny_experiment(n=2)
    done = run_cli("proxy", "--config", config, "--index", 2)
    assert done.returncode == 0, done.stderr
    result_path = proxy_dir(ExperimentConfig.load(config), 2) / "result.json"
    result = json.loads(result_path.read_text())
    assert result["steps"] == 8 and set(result["valid_loss"]) >= {"news", "code", "target"}
    stamp = result_path.stat().st_mtime_ns
    again = run_cli("proxy", "--config", config, "--index", 2)
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert result_path.stat().st_mtime_ns == stamp


def test_proxy_needs_a_known_index_and_a_proxy_section(tiny_experiment, tmp_path):
    config = tiny_experiment(n=2)
    missing = run_cli("proxy", "--config", config, "--index", 9)
    assert missing.returncode == 2 and "--index: no mixture" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    assert not (config.parent / "work" / "proxies" / "n9").exists()
    text = config.read_text()
    bare = tmp_path / "bare.yaml"
    bare.write_text(text[: text.index("proxy:")].replace("work_dir: work", f"work_dir: {config.parent / 'work'}"))
    no_proxy = run_cli("proxy", "--config", bare, "--index", 1)
    assert no_proxy.returncode == 2 and "no proxy: section" in no_proxy.stderr


@pytest.mark.slow
def test_stopped_proxy_resumes_to_the_uninterrupted_result(tiny_experiment, tmp_path):
    config = tiny_experiment(n=1, steps=60, save_interval=1000)
    experiment = ExperimentConfig.load(config)
    out = proxy_dir(experiment, 1)
    uninterrupted = run_cli("proxy", "--config", config, "--index", 1)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    reference = json.loads((out / "result.json").read_text())
    os.rename(out, tmp_path / "reference")

    # SIGTERM (what Slurm sends before a time limit) after step 5; the proxy checkpoints and asks for a requeue.
    stopped = run_cli("proxy", "--config", config, "--index", 1, env={**os.environ, "REGMIX_FAULT": "step@5:TERM"})
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert logged_steps(out / "metrics.jsonl") == 6 and not (out / "result.json").exists()
    resumed = run_cli("proxy", "--config", config, "--index", 1)
    assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stdout + resumed.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == reference["steps"] == 60
    for name, loss in reference["valid_loss"].items():
        assert result["valid_loss"][name] == pytest.approx(loss, abs=1e-6)



def test_a_malformed_array_task_id_is_one_line(tiny_experiment):
    config = tiny_experiment(n=2)
    done = run_cli("proxy", "--config", config, env={**os.environ, "SLURM_ARRAY_TASK_ID": "1a"})
    assert done.returncode == 2
    assert done.stderr.strip() == "regmix-ds proxy: error: SLURM_ARRAY_TASK_ID: expected an array task number, got '1a'"


@pytest.mark.slow
def test_two_runners_on_one_work_dir_train_every_proxy_once(tiny_experiment):
    """The first runner's proxy 1 stops itself (SIGSTOP) after a step, holding the run; a second
    runner then trains the rest and leaves proxy 1 to its owner, who finishes it when resumed."""
    config = tiny_experiment(n=3)
    experiment = ExperimentConfig.load(config)
    first = subprocess.Popen([sys.executable, "-m", "regmix_ds", "run-swarm", "--config", str(config), "--jobs", "1"],
                             env={**os.environ, "REGMIX_FAULT": "step:STOP"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_steps(proxy_dir(experiment, 1) / "metrics.jsonl", 1,
                       gone=lambda: first.poll() is not None and f"the first runner exited {first.poll()}")
        second = run_cli("run-swarm", "--config", config, "--jobs", 1)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "proxies 1 were being trained by another process" in second.stdout
        assert not (proxy_dir(experiment, 1) / "result.json").exists()
        for child in children_of(first.pid):
            os.kill(child, signal.SIGCONT)
        output, _ = first.communicate(timeout=TIMEOUT)
        assert first.returncode == 0, output
    finally:
        if first.poll() is None:
            for child in children_of(first.pid):
                os.kill(child, signal.SIGKILL)
            first.kill()
            first.wait()
    for index in (1, 2, 3):
        run = proxy_dir(experiment, index)
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
                 if '"step"' in line and '"loss"' in line]
        assert steps == list(range(1, 9)), f"proxy {index} trained steps {steps}"
        log = [line for line in (run / "proxy.log").read_text().splitlines() if line.strip()]
        assert len(log) == len(set(log)), f"proxy {index}'s log repeats lines"
        assert json.loads((run / "result.json").read_text())["steps"] == 8
    assert "another process is training n1" in (proxy_dir(experiment, 1) / "proxy.log").read_text()


def children_of(pid: int) -> list[int]:
    """The child processes of `pid` now, started from any of its threads (Linux /proc)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(FileNotFoundError):
            children += [int(child) for child in (task / "children").read_text().split()]
    return children

import csv
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from regmix_ds.core import files as files_module
from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import write_json_atomic
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline import slurm
from regmix_ds.pipeline.collect import STATUSES, collect
from tests.conftest import corpus_of, make_experiment
from tests.helpers import proxy_dir, run_cli


@pytest.fixture(scope="module")
def trained_first_proxy(tiny_manifest, tmp_path_factory):
    """A 4-mixture experiment whose proxy 1 was trained for real (once for the module)."""
    config = make_experiment(corpus_of(tiny_manifest), tmp_path_factory.mktemp("collect") / "experiment", n=4)
    trained = run_cli("proxy", "--config", config, "--index", 1)
    assert trained.returncode == 0, trained.stderr
    return config.parent


@pytest.fixture
def swarm_in_every_state(trained_first_proxy, tmp_path):
    """Proxy 1 trained for real, 2 running, 3 failed, 4 never started (a private copy)."""
    root = shutil.copytree(trained_first_proxy, tmp_path / "experiment")
    experiment = ExperimentConfig.load(root / "exp.yaml")
    proxy_dir(experiment, 2).mkdir(parents=True)
    (proxy_dir(experiment, 2) / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\n')
    proxy_dir(experiment, 3).mkdir(parents=True)
    (proxy_dir(experiment, 3) / "failed.json").write_text('{"index": 3, "exit_code": 1}')
    return experiment


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_collect_reports_each_state_and_writes_every_row(swarm_in_every_state):
    experiment = swarm_in_every_state
    collection = collect(experiment)
    assert [row.status for row in collection.rows] == ["done", "running", "failed", "missing"]
    assert collection.indices("failed", "missing") == [3, 4]
    rows = read_rows(experiment.work.results)
    result = json.loads((proxy_dir(experiment, 1) / "result.json").read_text())
    assert [r["index"] for r in rows] == ["1", "2", "3", "4"]
    for name, loss in result["valid_loss"].items():
        assert float(rows[0][f"loss:{name}"]) == loss
        assert rows[1][f"loss:{name}"] == ""
    for row in rows:
        mixture = Mixture.load(experiment.work.mixture(int(row["index"])))
        assert {k[2:]: float(v) for k, v in row.items() if k.startswith("w:")} == dict(mixture.weights)
    assert int(rows[0]["tokens"]) == result["tokens"]


def test_a_silent_run_directory_counts_as_failed_once_stale(swarm_in_every_state):
    assert [row.status for row in collect(swarm_in_every_state, stale_seconds=-1).rows][:2] == ["done", "failed"]


def test_collect_command_prints_counts_and_the_resubmission_line(swarm_in_every_state):
    experiment = swarm_in_every_state
    done = run_cli("collect", "--config", experiment.path, "--throttle", 4)
    assert done.returncode == 0, done.stderr
    assert "done 1 running 1 failed 1 missing 1" in done.stdout
    assert f"sbatch --array=3-4%4 slurm/proxies.sh {experiment.path}" in done.stdout


@pytest.mark.parametrize("content, problem", [
    ('{"valid_loss": {"news": 1.0}', "not valid JSON"),
    ('{"tokens": 5}', "not a proxy result"),
    ('{"valid_loss": {"news": NaN}, "mixture_hash": "HASH"}', "NaN is not a number JSON allows"),
    ('{"valid_loss": {"news": 1.0}, "mixture_hash": "0000"}', "different mixture"),
])
def test_a_bad_result_file_is_an_error_naming_it_and_nothing_is_written(swarm_in_every_state, content, problem):
    experiment = swarm_in_every_state
    path = proxy_dir(experiment, 4) / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("HASH", Mixture.load(experiment.work.mixture(4)).content_hash()))
    with pytest.raises(RegmixError, match=problem) as info:
        collect(experiment)
    assert str(info.value).startswith(str(path))
    assert not experiment.work.results.exists()


# ---- concurrency and SIGKILL: results.csv is always whole ----------------------------------------

COLLECTOR = """
import sys
from regmix_ds.pipeline.collect import collect
from regmix_ds.core.config import ExperimentConfig
experiment = ExperimentConfig.load(sys.argv[1])
print("ready", flush=True)
while True:
    collect(experiment)
"""

FINISHER = """
import json, sys, time
from pathlib import Path
from regmix_ds.core.files import write_json_atomic
out, delay, record = Path(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
out.mkdir(parents=True)
(out / "metrics.jsonl").write_text('{"step": 1, "loss": 5.0}\\n')
time.sleep(delay)
write_json_atomic(out / "result.json", record)
"""


def fake_result(experiment: ExperimentConfig, index: int) -> dict:
    """A result.json in the shape `train.loop.Member.result` writes, with made-up numbers."""
    mixture = Mixture.load(experiment.work.mixture(index))
    names = list(Manifest.load(experiment.work.manifest).valid)
    return {
        "mixture": dict(mixture.weights), "mixture_hash": mixture.content_hash(),
        "valid_loss": {name: 3.0 + index / 10 + k / 100 for k, name in enumerate(names)},
        "tokens": 512, "steps": 8, "wall_seconds": 2.5, "tokens_per_s": 900.0, "seed": 0, "preset": "tiny",
        "seq_len": 32, "global_batch": 2, "world_size": 1, "zero_stage": 0,
    }


def start_collector(experiment: ExperimentConfig, fault: str | None = None) -> subprocess.Popen:
    """A child running collect in a loop (after it says ready); with `fault`, it SIGKILLs itself there."""
    env = {**os.environ, **({"REGMIX_FAULT": fault} if fault else {})}
    child = subprocess.Popen([sys.executable, "-c", COLLECTOR, experiment.path], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    readable, _, _ = select.select([child.stdout], [], [], 120)  # bounded: a wedged child fails, not hangs
    if not readable or child.stdout.readline().strip() != "ready":
        child.kill()
        raise AssertionError(f"collector not ready within 120 s (exit {child.wait()}): {child.stderr.read()[-2000:]}")
    return child


def whole_table(path, indices: list[int]) -> int:
    """Check results.csv parses with one whole row per swarm member; return how many are done."""
    with open(path, newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header[:2] == ["index", "status"] and header[-2:] == ["tokens", "wall_seconds"]
    assert [int(row[0]) for row in rows] == indices
    done = 0
    for row in rows:
        assert len(row) == len(header), f"torn row {row}"
        assert row[1] in STATUSES
        losses = [cell for name, cell in zip(header, row) if name.startswith("loss:")]
        if row[1] == "done":
            done += 1
            assert all(float(cell) > 0 for cell in losses) and int(row[-2]) > 0
        else:
            assert losses == [""] * len(losses)
    return done


def test_eight_proxies_finishing_while_collect_loops_lose_no_row(tiny_experiment):
    experiment = ExperimentConfig.load(tiny_experiment(n=8))
    indices = list(range(1, 9))
    delays = np.random.default_rng(3).uniform(0.5, 4.0, size=8)
    collector = start_collector(experiment)
    finishers = [
        subprocess.Popen([sys.executable, "-c", FINISHER, str(proxy_dir(experiment, i)), str(delay),
                          json.dumps(fake_result(experiment, i))])
        for i, delay in zip(indices, delays)
    ]
    seen, done, deadline = 0, 0, time.monotonic() + 120
    try:
        while done < 8 or any(f.poll() is None for f in finishers):
            assert collector.poll() is None, f"collect died: {collector.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"after 120 s, {done} of 8 rows done"
            if experiment.work.results.exists():
                now = whole_table(experiment.work.results, indices)
                assert now >= done, "a done row disappeared"
                seen, done = seen + 1, now
            time.sleep(0.002)
    finally:
        collector.kill()
        collector.wait()
        for finisher in finishers:
            finisher.kill()
            finisher.wait()
    assert [f.wait() for f in finishers] == [0] * 8
    assert done == 8 and seen > 8
    rows = read_rows(experiment.work.results)
    for row in rows:
        loss = fake_result(experiment, int(row["index"]))["valid_loss"]
        assert {k[5:]: float(v) for k, v in row.items() if k.startswith("loss:")} == loss
    print(f"8 proxies finished during {seen} reads of results.csv; rows lost or torn: 0")


COLLECT_KILLS = ["open results.csv@1", "write results.csv@1", "write results.csv@2", "open results.csv@5",
                 "write results.csv@9"]
"""Kill collect inside its n-th write of results.csv: just after creating the temporary file, or
once it is complete and synced but not yet renamed into place."""


def test_sigkilled_collect_leaves_the_old_or_the_new_results_csv(tiny_experiment):
    experiment = ExperimentConfig.load(tiny_experiment(n=8))
    indices = list(range(1, 9))
    for i in indices[:5]:
        proxy_dir(experiment, i).mkdir(parents=True)
        write_json_atomic(proxy_dir(experiment, i) / "result.json", fake_result(experiment, i))
    for number, fault in enumerate(COLLECT_KILLS):
        child = start_collector(experiment, fault)
        try:
            assert child.wait(timeout=120) == -signal.SIGKILL, f"{fault}: {child.stderr.read()[-2000:]}"
        finally:
            if child.poll() is None:  # the fault point was never reached: stop the looping collector
                child.kill()
                child.wait(timeout=30)
        if number < 2:  # killed inside the first write of results.csv there ever was
            assert not experiment.work.results.exists()
        else:
            assert whole_table(experiment.work.results, indices) == 5
        leftovers = [p for p in experiment.work.root.iterdir() if p.name.startswith(".results.csv.")]
        assert len(leftovers) == 1 and leftovers[0].suffix == ".tmp", f"{fault}: not inside a write"
        leftovers[0].unlink()
    print(f"{len(COLLECT_KILLS)} SIGKILLs of collect, every one inside a write of results.csv; torn tables: 0")


def test_collect_tolerates_files_that_vanish_while_it_scans(swarm_in_every_state, monkeypatch):
    """A proxy renames its `.result.json.*.tmp` into place between collect's listing and its stat."""
    run = swarm_in_every_state.work.proxy(2).path
    (run / ".result.json.x.tmp").write_text("{}")
    listed = os.scandir

    def scandir_then_rename(path):
        found = list(listed(path))
        for entry in found:
            if entry.name.endswith(".tmp"):
                os.unlink(entry.path)  # gone before collect stats it
        return iter(found)

    monkeypatch.setattr(files_module.os, "scandir", scandir_then_rename)
    assert [row.status for row in collect(swarm_in_every_state).rows] == ["done", "running", "failed", "missing"]


def test_collect_never_fails_while_a_result_is_being_rewritten(swarm_in_every_state):
    result = swarm_in_every_state.work.proxy(2).path / "result.json"
    record = fake_result(swarm_in_every_state, 2)
    stop = threading.Event()

    def rewrite() -> None:
        while not stop.is_set():
            write_json_atomic(result, record)

    writer = threading.Thread(target=rewrite, daemon=True)
    writer.start()
    try:
        for _ in range(300):
            statuses = [row.status for row in collect(swarm_in_every_state).rows]
            assert statuses[1] in ("running", "done")
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not writer.is_alive()


def test_tasks_slurm_still_holds_are_pending_or_running_not_missing(swarm_in_every_state):
    experiment = swarm_in_every_state
    config = Path(experiment.path)
    squeue = "\n".join([
        f"3|PENDING|{config.parent}|/opt/regmix/slurm/proxies.sh {config.name}",  # relative to the job's directory
        f"4|RUNNING|/somewhere|/opt/regmix/slurm/proxies.sh {config}",
        f"2|PENDING|{config.parent}|/opt/regmix/slurm/proxies.sh other.yaml",  # another experiment
        f"N/A|PENDING|{config.parent}|/opt/regmix/slurm/target.sh {config.name}",  # not an array task
    ])
    queued = slurm.tasks_of(squeue, config)
    assert queued == {3: "pending", 4: "running"}
    rows = collect(experiment, queued=queued).rows
    # Proxy 3 failed once and waits in the queue again; 4 never started here and runs now.
    assert [row.status for row in rows] == ["done", "running", "pending", "running"]
    assert [row["status"] for row in read_rows(experiment.work.results)] == ["done", "running", "pending", "running"]

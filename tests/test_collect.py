import csv
import json
import subprocess
import sys
import time

import numpy as np
import pytest

from regmix_ds.core.config import ExperimentConfig
from regmix_ds.core.errors import RegmixError
from regmix_ds.core.files import write_json_atomic
from regmix_ds.core.manifest import Manifest
from regmix_ds.core.mixture import Mixture
from regmix_ds.pipeline.collect import STATUSES, collect
from tests.helpers import proxy_dir, run_cli


@pytest.fixture
def swarm_in_every_state(tiny_experiment):
    """Proxy 1 trained for real, 2 running, 3 failed, 4 never started."""
    config = tiny_experiment(n=4)
    trained = run_cli("proxy", "--config", config, "--index", 1)
    assert trained.returncode == 0, trained.stderr
    experiment = ExperimentConfig.load(config)
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
        mixture = Mixture.load(experiment.work.swarm / f"n{row['index']}.json")
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
    ('{"valid_loss": {"news": NaN}, "mixture_hash": "HASH"}', "not a finite number"),
    ('{"valid_loss": {"news": 1.0}, "mixture_hash": "0000"}', "different mixture"),
])
def test_a_bad_result_file_is_an_error_naming_it_and_nothing_is_written(swarm_in_every_state, content, problem):
    experiment = swarm_in_every_state
    path = proxy_dir(experiment, 4) / "result.json"
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("HASH", Mixture.load(experiment.work.swarm / "n4.json").content_hash()))
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
    mixture = Mixture.load(experiment.work.swarm / f"n{index}.json")
    names = list(Manifest.load(experiment.work.manifest).valid)
    return {
        "mixture": dict(mixture.weights), "mixture_hash": mixture.content_hash(),
        "valid_loss": {name: 3.0 + index / 10 + k / 100 for k, name in enumerate(names)},
        "tokens": 512, "steps": 8, "wall_seconds": 2.5, "tokens_per_s": 900.0, "seed": 0, "preset": "tiny",
        "seq_len": 32, "global_batch": 2, "world_size": 1, "zero_stage": 0,
    }


def start_collector(experiment: ExperimentConfig) -> subprocess.Popen:
    child = subprocess.Popen([sys.executable, "-c", COLLECTOR, experiment.path], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
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
    seen, done = 0, 0
    try:
        while done < 8 or any(f.poll() is None for f in finishers):
            if experiment.work.results.exists():
                now = whole_table(experiment.work.results, indices)
                assert now >= done, "a done row disappeared"
                seen, done = seen + 1, now
            time.sleep(0.002)
    finally:
        collector.kill()
        collector.wait()
    assert [f.wait() for f in finishers] == [0] * 8
    assert done == 8 and seen > 8
    rows = read_rows(experiment.work.results)
    for row in rows:
        loss = fake_result(experiment, int(row["index"]))["valid_loss"]
        assert {k[5:]: float(v) for k, v in row.items() if k.startswith("loss:")} == loss
    print(f"8 proxies finished during {seen} reads of results.csv; rows lost or torn: 0")


def test_sigkilled_collect_leaves_the_old_or_the_new_results_csv(tiny_experiment):
    experiment = ExperimentConfig.load(tiny_experiment(n=8))
    indices = list(range(1, 9))
    for i in indices[:5]:
        proxy_dir(experiment, i).mkdir(parents=True)
        write_json_atomic(proxy_dir(experiment, i) / "result.json", fake_result(experiment, i))
    rng = np.random.default_rng(4)
    kills, torn_writes = 25, 0
    for _ in range(kills):
        child = start_collector(experiment)
        time.sleep(float(rng.uniform(0.0, 0.3)))
        child.kill()
        child.wait()
        assert whole_table(experiment.work.results, indices) == 5
        leftovers = [p for p in experiment.work.root.iterdir() if p.name.startswith(".results.csv.")]
        assert all(p.suffix == ".tmp" for p in leftovers)
        torn_writes += len(leftovers)
        for p in leftovers:
            p.unlink()
    print(f"{kills} SIGKILLs of collect, {torn_writes} inside a write of results.csv; torn tables seen: 0")

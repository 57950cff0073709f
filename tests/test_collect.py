import csv
import json

import pytest

from regmix_ds.collect import collect
from regmix_ds.config import ExperimentConfig
from regmix_ds.errors import RegmixError
from regmix_ds.mixture import Mixture
from regmix_ds.proxies import proxy_dir

from tests.helpers import run_cli


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
    rows = read_rows(experiment.results_path)
    result = json.loads((proxy_dir(experiment, 1) / "result.json").read_text())
    assert [r["index"] for r in rows] == ["1", "2", "3", "4"]
    for name, loss in result["valid_loss"].items():
        assert float(rows[0][f"loss:{name}"]) == loss
        assert rows[1][f"loss:{name}"] == ""
    for row in rows:
        mixture = Mixture.load(experiment.swarm_dir / f"n{row['index']}.json")
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
    path.write_text(content.replace("HASH", Mixture.load(experiment.swarm_dir / "n4.json").content_hash()))
    with pytest.raises(RegmixError, match=problem) as info:
        collect(experiment)
    assert str(info.value).startswith(str(path))
    assert not experiment.results_path.exists()

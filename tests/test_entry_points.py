"""The ways a user starts regmix-ds, as real processes: the console script, `python -m regmix_ds`,
and train.py; each answers --help, and a bad input is one line and exit 2 from each."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.helpers import wait_for_steps

ENTRY_POINTS = {
    "console script": [shutil.which("regmix-ds") or "regmix-ds"],
    "python -m": [sys.executable, "-m", "regmix_ds"],
}


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_regmix_ds_answers_help_and_names_a_bad_flag_in_one_line(entry, tmp_path):
    command = ENTRY_POINTS[entry]
    helped = run([*command, "--help"])
    assert helped.returncode == 0 and "prepare" in helped.stdout and "simulate" in helped.stdout
    missing = tmp_path / "absent.yaml"
    refused = run([*command, "swarm", "--config", str(missing)])
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"regmix-ds swarm: error: {missing}: file not found"


def test_train_py_and_regmix_ds_train_take_the_same_flags(tmp_path):
    train_py = run([sys.executable, "train.py", "--help"])
    subcommand = run([*ENTRY_POINTS["python -m"], "train", "--help"])
    assert train_py.returncode == subcommand.returncode == 0

    def flags(text):
        return sorted(word.strip(",[]") for word in text.split() if word.startswith("--"))

    assert flags(train_py.stdout) == flags(subcommand.stdout)
    refused = run([sys.executable, "train.py", "--manifest", str(tmp_path / "m.json"), "--deepspeed_config", "ds.json",
                   "--out", str(tmp_path / "run"), "--preset", "tiny", "--steps", "0"])
    assert refused.returncode == 2 and refused.stderr.strip() == "train.py: error: --steps: must be >= 1, got 0"
    assert not (tmp_path / "run").exists()


def default_sigint() -> None:
    """A shell starts background jobs with SIGINT ignored, and Python keeps an ignored SIGINT
    ignored; a terminal's foreground job, what this test plays, has the default action."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_local_swarm_with_exit_130(tiny_experiment, tmp_path):
    """Ctrl-C in a terminal interrupts the whole foreground process group: run-swarm and its proxies."""
    config = tiny_experiment(n=2, steps=2000)
    log = tmp_path / "run-swarm.log"
    with open(log, "w") as output:
        process = subprocess.Popen([*ENTRY_POINTS["python -m"], "run-swarm", "--config", str(config), "--jobs", "2"],
                                   cwd=ROOT, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=default_sigint)
    try:
        metrics = config.parent / "work" / "proxies" / "n1" / "metrics.jsonl"
        wait_for_steps(metrics, 1, gone=lambda: process.poll() is not None and f"run-swarm exited {process.poll()}")
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "regmix-ds run-swarm: interrupted" in log.read_text()
    assert not (config.parent / "work" / "proxies" / "n1" / "result.json").exists()

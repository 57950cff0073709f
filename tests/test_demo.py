"""launchers/demo.sh end to end, scaled down (8 proxies, a smaller corpus): same code path."""
import json
import os
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def run_demo(directory):
    env = {**os.environ, "DEMO_PROXIES": "8", "DEMO_DOCS": "300", "DEMO_PORT": "29651"}
    return subprocess.run(["bash", "launchers/demo.sh", str(directory)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=DEMO_SECONDS)


# Two whole demos in one test: the suite-wide 300 s would cut it short on a loaded machine, and
# its own bound must come first so that the failure shows what the demo printed.
DEMO_SECONDS = 600


@pytest.mark.timeout(2 * DEMO_SECONDS + 60)
def test_demo_runs_the_whole_loop_and_reuses_finished_stages(tmp_path):
    first = run_demo(tmp_path / "demo")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    work = tmp_path / "demo" / "work"
    results = (work / "results.csv").read_text().splitlines()
    assert len(results) == 1 + 8 and all(",done," in row for row in results[1:])
    best = json.loads((work / "best.json").read_text())
    block = json.loads((work / "zero3_best.json").read_text())["regmix"]["mixture"]
    assert block["weights"] == pytest.approx(best["weights"])
    target = json.loads((work / "target" / "result.json").read_text())
    assert (target["world_size"], target["zero_stage"]) == (2, 3)
    assert target["mixture_hash"] == best["hash"]
    rows = {row["name"]: row for row in json.loads((work / "report" / "verify.json").read_text())}
    assert set(rows) == {"chosen", "natural", "target composition", "best swarm member", "median swarm member"}
    assert rows["chosen"]["mixture"] == pytest.approx(best["weights"])
    summary = (work / "report" / "summary.md").read_text()
    assert "| chosen |" in summary and "| natural |" in summary
    assert {p.name for p in (work / "report").glob("*.png")} >= {"predicted_vs_measured.png", "weights.png"}

    again = run_demo(tmp_path / "demo")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 of 8 proxies already done; training 0" in again.stdout
    assert "run already finished" in again.stdout

"""Progress in a log file is plain lines, never carriage-return redraws."""
import io

from regmix_ds.core import progress


def test_a_log_gets_plain_lines_at_intervals_and_at_the_end(monkeypatch):
    err, now = io.StringIO(), [0.0]
    monkeypatch.setattr(progress.sys, "stderr", err)
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    assert not progress.interactive()
    bar = progress.bar(total=100, desc="proxies", unit="proxy")
    for _ in range(100):
        now[0] += 1.0  # 100 s of work: a line at 30, 60 and 90 s, and one at the end
        bar.update()
    bar.set_postfix_str("2 failed")
    bar.close()
    bar.close()
    lines = err.getvalue().splitlines()
    assert "\r" not in err.getvalue()
    assert lines == [
        "proxies: 30/100 proxy (30%) | 0:00:30, ETA 0:01:10",
        "proxies: 60/100 proxy (60%) | 0:01:00, ETA 0:00:40",
        "proxies: 90/100 proxy (90%) | 0:01:30, ETA 0:00:10",
        "proxies: 100/100 proxy (100%) | 2 failed | 0:01:40, ETA 0:00:00",
    ]


def test_iterating_a_log_bar_counts_and_closes(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", err)
    assert list(progress.bar(range(3), desc="refits", unit="refit")) == [0, 1, 2]
    assert err.getvalue().startswith("refits: 3/3 refit (100%) | ")
    assert progress.clock(3 * 86400) == "3.0 days"

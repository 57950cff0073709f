"""The matmul peak probe and model FLOPs utilisation."""
import pytest
import torch

from regmix_ds.train import utilization
from regmix_ds.train.utilization import Utilization, measure_matmul_peak


def test_the_probe_is_2n3_flops_over_its_fastest_real_product(monkeypatch):
    # A fake clock makes the timing exact: a warm-up product, then two timed ones of 0.25 s and 0.4 s.
    ticks = iter([0.0, 0.5, 1.0, 1.25, 2.0, 2.4])
    monkeypatch.setattr(utilization.time, "perf_counter", lambda: next(ticks))
    shapes, multiply = [], torch.mm

    def recording_mm(a, b):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return multiply(a, b)

    monkeypatch.setattr(torch, "mm", recording_mm)
    state = torch.random.get_rng_state()
    assert measure_matmul_peak(size=64, repeats=2) == 2 * 64**3 / 0.25
    assert shapes == [((64, 64), (64, 64))] * 3
    assert torch.equal(torch.random.get_rng_state(), state)


def test_mfu_is_model_arithmetic_over_the_measured_peak():
    utilization = Utilization(flops_per_token=6e6, peak_flops_per_s=1.2e11)
    assert utilization.mfu(10_000) == pytest.approx(0.5)
    assert utilization.mfu(0) == 0

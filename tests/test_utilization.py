"""The matmul peak probe and model FLOPs utilisation."""
import pytest
import torch

from regmix_ds.train.utilization import Utilization, measure_matmul_peak


def test_the_probe_times_real_products_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    small, large = measure_matmul_peak(size=64, repeats=2), measure_matmul_peak(size=512, repeats=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    # 2 n^3 FLOPs in a positive time: finite and positive; a large product keeps the cores busier.
    assert 0 < small < float("inf") and large > small


def test_mfu_is_model_arithmetic_over_the_measured_peak():
    utilization = Utilization(flops_per_token=6e6, peak_flops_per_s=1.2e11)
    assert utilization.mfu(10_000) == pytest.approx(0.5)
    assert utilization.mfu(0) == 0

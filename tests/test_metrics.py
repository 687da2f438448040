import pytest
import torch

from fdu import metrics


def test_energy_distance_is_zero_on_average_for_one_law_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    same = [metrics.energy_distance(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g))
            for _ in range(20)]
    assert abs(sum(same) / len(same)) < 0.01
    shifted = metrics.energy_distance(torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g) + 2.0)
    assert shifted > 1.0


def test_bootstrap_interval_contains_the_value_and_shrinks_with_n():
    g = torch.Generator().manual_seed(1)
    small = metrics.bootstrap(lambda x: x.mean(), (torch.randn(50, generator=g),), boot=200)
    large = metrics.bootstrap(lambda x: x.mean(), (torch.randn(2000, generator=g),), boot=200)
    for r in (small, large):
        assert r["low"] <= r["value"] <= r["high"]
    assert (large["high"] - large["low"]) < (small["high"] - small["low"]) / 3


def test_bad_samples():
    with pytest.raises(ValueError):
        metrics.bootstrap(lambda x: x.mean(), (torch.zeros(2),))
    with pytest.raises(ValueError):
        metrics.energy_distance(torch.zeros(1, 2), torch.zeros(5, 2))

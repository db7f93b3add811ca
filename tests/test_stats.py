"""The noise yardstick: the interval of an accuracy over n images, checked against a bootstrap, and its words."""

from __future__ import annotations

import pytest
import torch

from mnistlab.stats import Difference, accuracy_halfwidth, difference_halfwidth, z_score


def bootstrap_halfwidth(correct: torch.Tensor, samples: int = 4000, seed: int = 0) -> float:
    """Half the width of the 95% percentile interval of the accuracy (pt), resampling the images."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(correct), (samples, len(correct)), generator=g)
    accs = 100.0 * correct[idx].double().mean(1)
    lo, hi = torch.quantile(accs, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return (hi - lo) / 2


def test_the_interval_at_98_percent_over_10000_images():
    assert z_score(0.95) == pytest.approx(1.95996, abs=1e-5)
    assert accuracy_halfwidth(98.0, 10_000) == pytest.approx(0.2744, abs=1e-4)  # 1.96 sqrt(.98 * .02 / 1e4)
    correct = torch.zeros(10_000, dtype=torch.bool)
    correct[:9_800] = True
    assert bootstrap_halfwidth(correct) == pytest.approx(accuracy_halfwidth(98.0, 10_000), abs=0.015)
    assert 0.26 <= bootstrap_halfwidth(correct) <= 0.29


def test_the_interval_shrinks_with_images_and_near_100_percent():
    assert accuracy_halfwidth(98.0, 2_500) == pytest.approx(2 * accuracy_halfwidth(98.0, 10_000))
    assert accuracy_halfwidth(99.5, 10_000) < accuracy_halfwidth(98.0, 10_000) < accuracy_halfwidth(50.0, 10_000)
    assert accuracy_halfwidth(100.0, 10_000) == 0.0
    assert accuracy_halfwidth(98.0, 10_000, confidence=0.99) > accuracy_halfwidth(98.0, 10_000)
    with pytest.raises(ValueError):
        accuracy_halfwidth(98.0, 0)


def test_a_difference_is_weighed_against_the_noise():
    q6 = Difference(98.41, 98.17, 10_000)  # the lab's continuation: 5 -> 8 epochs
    assert q6.value == pytest.approx(0.24) and q6.noise == pytest.approx(0.2542, abs=1e-3)
    assert not q6.exceeds
    assert q6.words() == "+0.24 pt, within the noise (±0.25 pt: the 95% interval of one accuracy over 10,000 images)"
    big = Difference(98.37, 97.80, 10_000)
    assert big.exceeds and big.words().startswith("+0.57 pt, larger than the noise")
    assert Difference(97.80, 98.37, 10_000).exceeds  # either sign
    assert Difference(88.0, 86.0, 500).as_dict()["exceeds_noise"] is False  # 2 pt on 500 images is noise


def test_the_interval_of_a_difference_of_two_independent_accuracies():
    # 98% on 10,000 images each: each +-0.274 pt, their difference +-0.388 pt (the variances add)
    assert difference_halfwidth(98.0, 98.0, 10_000) == pytest.approx(0.388, abs=0.001)
    assert difference_halfwidth(98.0, 98.0, 10_000) == pytest.approx(2 ** 0.5 * accuracy_halfwidth(98.0, 10_000))
    assert difference_halfwidth(98.0, 90.0, 10_000, 2_500) > difference_halfwidth(98.0, 90.0, 10_000)

"""How much an accuracy measured on n images can move by chance, and whether a difference exceeds that.

An accuracy p measured on n images is a binomial proportion; its 95% interval is p +- 1.96 sqrt(p(1-p)/n)
(the normal approximation, which a bootstrap over the images reproduces: 0.27 pt at 98% over 10,000 images).
Every comparison the toolkit words (question 6, a sweep's gain over the preset, an optimizer comparison)
calls a difference "larger than the noise" only when it exceeds this half-width at the level of the two
accuracies. It is a yardstick, not a test: two models scored on the same images share most of their mistakes,
which makes the sampling error of their difference smaller, while a retrained model also moves with its seed,
which one run cannot show (the fast preset: a standard deviation of 0.05 pt over 20 seeds, against a binomial
standard error of 0.09 pt at 99.1% on 10,000 images), and the two roughly offset.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

from mnistlab.tables import pts


def z_score(confidence: float = 0.95) -> float:
    """The two-sided normal quantile of `confidence` (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def accuracy_halfwidth(acc: float, n: int, confidence: float = 0.95) -> float:
    """Half-width, in percentage points, of the `confidence` interval of an accuracy `acc` (percent) on n images."""
    if n < 1:
        raise ValueError(f"an accuracy needs at least one image, got n={n}")
    p = min(max(acc / 100.0, 0.0), 1.0)
    return 100.0 * z_score(confidence) * math.sqrt(p * (1.0 - p) / n)


def difference_halfwidth(a: float, b: float, n_a: int, n_b: int | None = None, confidence: float = 0.95) -> float:
    """Half-width, in percentage points, of the `confidence` interval of a - b, two accuracies (percent) of two
    independently trained models measured on n_a and n_b images: the two binomial variances added."""
    n_b = n_a if n_b is None else n_b
    return math.hypot(accuracy_halfwidth(a, n_a, confidence), accuracy_halfwidth(b, n_b, confidence))


@dataclass(frozen=True)
class Difference:
    """`a - b` of two accuracies (percent) on n images each, weighed against the noise of one of them."""

    a: float
    b: float
    n: int
    confidence: float = 0.95

    @property
    def value(self) -> float:
        return self.a - self.b

    @property
    def noise(self) -> float:
        """The half-width of one accuracy's interval at the two accuracies' mean level."""
        return accuracy_halfwidth((self.a + self.b) / 2, self.n, self.confidence)

    @property
    def exceeds(self) -> bool:
        return abs(self.value) > self.noise

    def words(self) -> str:
        """"+0.24 pt, within the noise (+-0.25 pt: 95% interval over 10,000 images)"."""
        where = "larger than" if self.exceeds else "within"
        return (f"{pts(self.value)}, {where} the noise (±{self.noise:.2f} pt: the {self.confidence:.0%} interval "
                f"of one accuracy over {self.n:,} images)")

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"a": self.a, "b": self.b, "difference": self.value, "noise": self.noise, "exceeds_noise": self.exceeds,
                "n": self.n}


def best_epoch(accs: Sequence[float]) -> int:
    """The epoch (1-based) of the highest of the per-epoch accuracies `accs`, the earliest of equal ones: the
    one rule by which early stopping keeps an epoch, sweep scores a setting and the lab's analysis quotes the
    best epoch."""
    return max(range(len(accs)), key=lambda i: (accs[i], -i)) + 1

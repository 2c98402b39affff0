"""The A/B test's statistics (pure functions over counts; here rather than in policies/ because they
need numpy and scipy): two-proportion z-tests against the control, group-sequential
boundaries for repeated looks, and Holm's step-down across several variants.

Why these (docs/experiments.md has the long form):

- **Two-proportion z-test, pooled variance.** The goal is a yes/no per contact (delivered,
  clicked, converted), so each arm is a binomial proportion; the pooled z is the standard test of
  equal proportions and is accurate at campaign sizes (hundreds per arm and up).
- **Lan–DeMets spending with the O'Brien–Fleming-type function**, per tail
  α(t)/2 = 2 − 2Φ(z₁₋α/₄ / √t) (gsDesign's symmetric two-sided ``sfLDOF``), at information
  fraction t = k/K for look k of K planned. Peeking at a plain z-test after every
  batch of callbacks inflates false positives well past α; spending makes the total over all
  looks α, and this function spends almost nothing early (when a few early clicks decide little)
  and leaves nearly the whole α for the final look, so a test run to the end loses little power
  against a single fixed-horizon test. The audience is sent at once and results accrue later;
  the information at look k is then *more* than k/K (clicks come early), which makes the
  assumed correlation between looks too low and the boundaries conservative, never liberal
  (tests/test_experiment_stats.py simulates exactly that).
- **Holm's step-down** over the variants' comparisons with the control (m = variants − 1), each
  step using the boundaries of the group-sequential design at α/(m − j): it controls the
  family-wise error over all comparisons and all looks, and is uniformly more powerful than
  Bonferroni.

Boundaries are computed by the recursive numerical integration of Armitage, McPherson & Rowe
(Jennison & Turnbull, *Group Sequential Methods*, ch. 19): no maintained Python library ships
Lan–DeMets boundaries without a large dependency, and the recursion is a few lines over scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import optimize, stats

GRID_POINTS = 801  # odd, for Simpson's rule; boundaries agree with published tables to 1e-3


def spent_alpha(alpha: float, t: float) -> float:
    """Two-sided α spent by information fraction t: each tail spends the one-sided O'Brien–Fleming-type
    Lan–DeMets function at α/2, so at t = 1 the total is exactly α."""
    return float(2.0 * (2.0 - 2.0 * stats.norm.cdf(stats.norm.ppf(1.0 - alpha / 4.0) / np.sqrt(t))))


def _simpson_weights(points: int, step: float) -> np.ndarray:
    weights = np.ones(points)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    return weights * step / 3.0


@lru_cache(maxsize=256)
def boundaries(alpha: float, looks: int) -> tuple[float, ...]:
    """Two-sided critical |z| at looks 1..K, equally spaced in information (t_k = k/K).

    The walk is B_k = Z_k·√t_k, a Brownian motion in information time: its density over the
    continuation region is carried from look to look by the normal kernel, and each boundary is
    the root that makes the probability of first crossing there equal the α spent since the last.
    """
    times = np.arange(1, looks + 1) / looks
    spent = np.diff([0.0, *(spent_alpha(alpha, t) for t in times)])
    critical = [float(stats.norm.ppf(1.0 - spent[0] / 2.0))]
    half_width = critical[0] * np.sqrt(times[0])
    grid = np.linspace(-half_width, half_width, GRID_POINTS)
    density = stats.norm.pdf(grid, scale=np.sqrt(times[0]))
    for k in range(1, looks):
        sd = np.sqrt(times[k] - times[k - 1])
        weighted = density * _simpson_weights(GRID_POINTS, grid[1] - grid[0])

        def crossing(c: float) -> float:
            edge = c * np.sqrt(times[k])
            outside = stats.norm.cdf((-edge - grid) / sd) + stats.norm.sf((edge - grid) / sd)
            return float(weighted @ outside) - spent[k]

        c = optimize.brentq(crossing, 0.1, 40.0, xtol=1e-9)
        critical.append(float(c))
        half_width = c * np.sqrt(times[k])
        new_grid = np.linspace(-half_width, half_width, GRID_POINTS)
        density = stats.norm.pdf((new_grid[:, None] - grid[None, :]) / sd) / sd @ weighted
        grid = new_grid
    return tuple(critical)


def z_statistics(successes: np.ndarray, n: np.ndarray, control_successes: np.ndarray, control_n: np.ndarray) -> np.ndarray:
    """Pooled two-proportion z of each variant against the control (array-wise; 0 where undefined:
    an arm without contacts, or no or all successes in both, says nothing)."""
    successes, n, control_successes, control_n = (np.asarray(a, dtype=float) for a in (successes, n, control_successes, control_n))
    with np.errstate(divide="ignore", invalid="ignore"):
        pooled = (successes + control_successes) / (n + control_n)
        se = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n + 1.0 / control_n))
        z = (successes / n - control_successes / control_n) / se
    return np.where(np.isfinite(z), z, 0.0)


def holm_rejections(z: np.ndarray, look: int, looks: int, alpha: float) -> np.ndarray:
    """Which comparisons (last axis, m of them) Holm's step-down rejects at ``look``: sorted by |z|
    descending, step j rejects while |z| reaches the look's boundary of the design at α/(m − j)."""
    z = np.asarray(z, dtype=float)
    m = z.shape[-1]
    thresholds = np.array([boundaries(alpha / (m - j), looks)[look - 1] for j in range(m)])
    order = np.argsort(-np.abs(z), axis=-1)
    step_passes = np.take_along_axis(np.abs(z), order, axis=-1) >= thresholds
    rejected_sorted = np.cumprod(step_passes, axis=-1).astype(bool)
    rejected = np.empty_like(rejected_sorted)
    np.put_along_axis(rejected, order, rejected_sorted, axis=-1)
    return rejected


@dataclass(frozen=True)
class ArmCounts:
    name: str
    n: int  # contacts in the arm who were sent the campaign
    successes: int  # of them, those who reached the goal within the window


@dataclass(frozen=True)
class Comparison:
    """One arm's figures at a look; the control's has no test figures (None)."""

    name: str
    n: int
    successes: int
    rate: float | None
    lift: float | None = None  # absolute: rate − control rate
    lift_low: float | None = None  # repeated confidence interval (valid at every look) for the lift
    lift_high: float | None = None
    relative_lift: float | None = None  # lift / control rate
    z: float | None = None
    boundary: float | None = None  # |z| this comparison had to reach at this look (its Holm step)
    p_value: float | None = None  # nominal two-sided p of z ...
    p_threshold: float | None = None  # ... and the nominal level it must be under at this look
    significant: bool = False


@dataclass(frozen=True)
class Verdict:
    look: int
    looks: int
    control: str
    comparisons: tuple[Comparison, ...]  # the control first
    winner: str | None

    @property
    def final(self) -> bool:
        return self.winner is not None or self.look >= self.looks

    @property
    def decision(self) -> str:
        if self.winner is not None:
            return f"winner {self.winner}"
        if self.look < self.looks:
            return f"no winner yet (look {self.look} of {self.looks})"
        return f"no winner (final look {self.look} of {self.looks})"


def _rate(successes: int, n: int) -> float | None:
    return successes / n if n else None


def evaluate(arms: list[ArmCounts], look: int, looks: int, alpha: float) -> Verdict:
    """The test at ``look`` of ``looks``: ``arms[0]`` is the control, the rest its challengers.

    The winner is the best challenger significantly better than the control; the control wins
    only when every challenger is significantly worse. Anything else continues, and at the final
    look is reported as no winner.
    """
    if not 1 <= look <= looks:
        raise ValueError(f"look {look} is outside 1..{looks}")
    control, challengers = arms[0], arms[1:]
    z = z_statistics([a.successes for a in challengers], [a.n for a in challengers], control.successes, control.n)
    rejected = holm_rejections(z, look, looks, alpha)
    m = len(challengers)
    # The boundary each comparison met (or had to meet): its step in the |z| order.
    rank = np.empty(m, dtype=int)
    rank[np.argsort(-np.abs(z))] = np.arange(m)
    control_rate = _rate(control.successes, control.n)
    rows = [Comparison(control.name, control.n, control.successes, control_rate)]
    for arm, zi, step, significant in zip(challengers, z, rank, rejected, strict=True):
        boundary = boundaries(alpha / (m - step), looks)[look - 1]
        rate = _rate(arm.successes, arm.n)
        lift = low = high = relative = None
        if rate is not None and control_rate is not None:
            lift = rate - control_rate
            se = np.sqrt(rate * (1 - rate) / arm.n + control_rate * (1 - control_rate) / control.n)
            # Repeated CI at Bonferroni's α/m: covers the true lift at every look simultaneously.
            half = boundaries(alpha / m, looks)[look - 1] * se
            low, high = lift - half, lift + half
            relative = lift / control_rate if control_rate else None
        rows.append(
            Comparison(
                arm.name, arm.n, arm.successes, rate, lift, low, high, relative, float(zi), boundary,
                float(2 * stats.norm.sf(abs(zi))), float(2 * stats.norm.sf(boundary)), bool(significant),
            )
        )  # fmt: skip
    better = [row for row in rows[1:] if row.significant and row.lift is not None and row.lift > 0]
    winner = None
    if better:
        winner = max(better, key=lambda row: row.rate).name
    elif challengers and all(row.significant and row.lift is not None and row.lift < 0 for row in rows[1:]):
        winner = control.name
    return Verdict(look, looks, control.name, tuple(rows), winner)

"""The A/B test's statistics: boundaries as published, false positives at or under α over
repeated looks (A/A simulations with a fixed seed), and real effects found (power).

Monte Carlo tolerance: a simulated rate over S experiments has standard error √(α(1−α)/S); with
S = 20,000 and α = 0.05 that is 0.0015, and the assertions allow three of them (0.0046) above
the nominal α. The seed is fixed, so the figures are the same on every run.
"""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator_assets.experiments.statistics import ArmCounts, boundaries, evaluate, holm_rejections, z_statistics

ALPHA = 0.05
SIMULATIONS = 20_000
TOLERANCE = 3 * np.sqrt(ALPHA * (1 - ALPHA) / SIMULATIONS)


@pytest.mark.parametrize(
    ("looks", "published"),
    [(1, [1.960]), (2, [2.963, 1.969]), (3, [3.710, 2.511, 1.993]), (5, [4.877, 3.357, 2.680, 2.290, 2.031])],
)
def test_boundaries_match_the_published_obrien_fleming_spending_ones(looks, published):
    # gsDesign(k, test.type = 2, alpha = 0.025, sfu = sfLDOF, timing equally spaced): its upper bounds.
    assert boundaries(ALPHA, looks) == pytest.approx(published, abs=1e-3)


def _rejections_per_experiment(successes: np.ndarray, n: np.ndarray, looks: int, alpha: float = ALPHA) -> np.ndarray:
    """Whether each simulated experiment rejected any comparison at any look: successes is
    (simulations, looks, arms) cumulative, n (looks, arms); arm 0 is the control."""
    z = z_statistics(successes[..., 1:], n[None, :, 1:], successes[..., :1], n[None, :, :1])
    per_look = [holm_rejections(z[:, k, :], k + 1, looks, alpha).any(axis=-1) for k in range(looks)]
    return np.stack(per_look, axis=1).any(axis=1)


def _accruing(rng: np.random.Generator, rates: list[float], per_look: int, looks: int) -> tuple[np.ndarray, np.ndarray]:
    """Contacts arriving in equal batches per look (the textbook group-sequential setting)."""
    batches = rng.binomial(per_look, np.broadcast_to(rates, (SIMULATIONS, looks, len(rates))))
    return batches.cumsum(axis=1), np.full((looks, len(rates)), per_look) * np.arange(1, looks + 1)[:, None]


def test_aa_false_positives_over_five_looks_stay_at_alpha_where_naive_peeking_triples_them():
    rng = np.random.default_rng(20261120)
    successes, n = _accruing(rng, [0.08, 0.08], per_look=400, looks=5)
    corrected = _rejections_per_experiment(successes, n, looks=5).mean()
    assert corrected <= ALPHA + TOLERANCE
    assert corrected >= ALPHA - 0.015  # and not by being uselessly strict
    z = z_statistics(successes[..., 1], n[None, :, 1], successes[..., 0], n[None, :, 0])
    naive = (np.abs(z) >= 1.96).any(axis=1).mean()  # a plain z-test at every look
    assert naive > 2 * ALPHA


def test_aaaa_family_wise_false_positives_with_holm_stay_at_alpha():
    rng = np.random.default_rng(7)
    successes, n = _accruing(rng, [0.2] * 4, per_look=300, looks=3)
    assert _rejections_per_experiment(successes, n, looks=3).mean() <= ALPHA + TOLERANCE


def test_aa_with_the_whole_audience_sent_at_once_and_results_arriving_later_stays_at_alpha():
    """How campaigns run: n fixed at the send, each success counted once its (exponential,
    front-loaded) delay has passed at the look's time; looks evenly spaced over the window."""
    rng = np.random.default_rng(11)
    looks, per_arm, rate = 4, 1500, 0.1
    succeeded = rng.random((SIMULATIONS, 2, per_arm)) < rate
    delays = rng.exponential(0.3, size=(SIMULATIONS, 2, per_arm))
    times = np.arange(1, looks + 1) / looks
    successes = np.stack([(succeeded & (delays <= t)).sum(axis=2) for t in times], axis=1)  # (sims, looks, arms)
    n = np.full((looks, 2), per_arm)
    assert _rejections_per_experiment(successes, n, looks).mean() <= ALPHA + TOLERANCE


def test_a_real_lift_is_found_and_the_worse_arm_never_wins():
    rng = np.random.default_rng(3)
    successes, n = _accruing(rng, [0.10, 0.13], per_look=1500, looks=3)
    z = z_statistics(successes[..., 1], n[None, :, 1], successes[..., 0], n[None, :, 0])
    crossed = np.abs(z) >= np.array(boundaries(ALPHA, 3))
    first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
    found = first >= 0
    right_way = z[np.arange(SIMULATIONS), np.maximum(first, 0)] > 0
    assert found.mean() >= 0.9  # power
    assert (found & ~right_way).mean() <= 0.001


def test_verdicts_name_the_winner_or_say_honestly_that_there_is_none():
    b_wins = evaluate([ArmCounts("a", 2000, 200), ArmCounts("b", 2000, 300)], look=1, looks=3, alpha=ALPHA)
    assert b_wins.winner == "b" and b_wins.decision == "winner b" and b_wins.final
    b = b_wins.comparisons[1]
    assert b.lift == pytest.approx(0.05) and b.lift_low < 0.05 < b.lift_high and b.lift_low > 0
    assert b.relative_lift == pytest.approx(0.5) and b.boundary == pytest.approx(3.710, abs=1e-3)
    assert b.p_value < b.p_threshold

    even = [ArmCounts("a", 1000, 100), ArmCounts("b", 1000, 110)]
    early = evaluate(even, look=2, looks=3, alpha=ALPHA)
    assert early.winner is None and early.decision == "no winner yet (look 2 of 3)" and not early.final
    last = evaluate(even, look=3, looks=3, alpha=ALPHA)
    assert last.decision == "no winner (final look 3 of 3)" and last.final

    # The control wins only when every challenger is significantly worse; one better one wins.
    worse = evaluate([ArmCounts("a", 3000, 600), ArmCounts("b", 3000, 300), ArmCounts("c", 3000, 320)], 3, 3, ALPHA)
    assert worse.winner == "a"
    mixed = evaluate([ArmCounts("a", 3000, 300), ArmCounts("b", 3000, 310), ArmCounts("c", 3000, 420), ArmCounts("d", 3000, 450)], 3, 3, ALPHA)
    assert mixed.winner == "d" and not mixed.comparisons[1].significant
    # Holm: the largest |z| meets the α/3 boundary, the next the α/2 one.
    assert mixed.comparisons[3].boundary == pytest.approx(boundaries(ALPHA / 3, 3)[2])
    assert mixed.comparisons[2].boundary == pytest.approx(boundaries(ALPHA / 2, 3)[2])


def test_an_arm_with_nothing_yet_says_nothing():
    verdict = evaluate([ArmCounts("a", 0, 0), ArmCounts("b", 10, 3)], 1, 2, ALPHA)
    assert verdict.winner is None and verdict.comparisons[1].z == 0.0 and verdict.comparisons[1].lift is None

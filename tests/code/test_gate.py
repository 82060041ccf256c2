"""The promotion gate (components/gate.py) on constructed scores: the paired fold rule (clear win,
tie, loss), which rule decides, and the test-split rules as the registry always applied them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from components import gate, registry

KEY = "hash/5-fold/seed-0"
CHAMP = (0.95, 0.96, 0.94, 0.97, 0.95)


def scores(label, test, folds=(), key=KEY):
    return gate.Scores(label, test, tuple(folds), key if folds else None)


@pytest.mark.parametrize(
    "challenger,verdict",
    [
        ((0.98, 0.99, 0.97, 0.99, 0.98), "win"),  # +0.028 on every fold
        ((0.96, 0.95, 0.95, 0.96, 0.96), "tie"),  # +1 point on some folds, -1 on others
        ((0.90, 0.92, 0.89, 0.93, 0.91), "loss"),  # -0.04 on every fold
    ],
)
def test_paired_rule_on_constructed_folds(challenger, verdict):
    got, diff, p = gate.paired(challenger, CHAMP, 0.0, 0.95)
    assert got == verdict
    assert diff == pytest.approx(np.mean(np.subtract(challenger, CHAMP)))
    # the p-value is the paired t-test's: t = mean(d) / (sd(d) / sqrt(n)) on n - 1 degrees of freedom
    d = np.subtract(challenger, CHAMP)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    assert p == pytest.approx(stats.t.sf(abs(t), len(d) - 1))  # one-sided, in the direction of the mean


def test_paired_rule_margin_and_confidence():
    up = (0.97, 0.975, 0.965, 0.985, 0.96)  # +0.013 on average, consistently
    assert gate.paired(up, CHAMP, 0.0, 0.95)[0] == "win"
    assert gate.paired(up, CHAMP, 0.05, 0.95)[0] == "loss"  # must beat it by 5 points: clearly does not
    v, _, p = gate.paired(up, CHAMP, 0.0, 0.95)
    assert gate.paired(up, CHAMP, 0.0, 1 - p / 2)[0] == "tie"  # a confidence its p-value does not reach


def test_paired_rule_on_identical_differences():
    assert gate.paired(CHAMP, CHAMP, 0.0, 0.95)[:2] == ("tie", 0.0)  # the t statistic would be 0/0
    shifted = tuple(a + 0.01 for a in CHAMP)
    assert gate.paired(shifted, CHAMP, 0.0, 0.95)[0] == "win"  # +-inf: every fold better by the same amount
    with pytest.raises(ValueError, match="equal-length"):
        gate.paired(CHAMP[:3], CHAMP, 0.0, 0.95)


def test_folds_are_used_only_when_both_sides_have_the_same_folds():
    a = scores("a", 0.90, (0.98, 0.99, 0.97, 0.99, 0.98))
    b = scores("b", 0.95, CHAMP)
    assert gate.compare(a, b, 0.0, 0.95).rule == "folds"  # the folds say win; the test split says loss
    assert gate.compare(a, b, 0.0, 0.95).verdict == "win"
    other = gate.Scores("b", 0.95, CHAMP, "otherhash/5-fold/seed-0")
    c = gate.compare(a, other, 0.0, 0.95)
    assert (c.rule, c.verdict) == ("test", "loss")
    assert gate.compare(a, scores("b", 0.95), 0.0, 0.95).rule == "test"  # the champion recorded no folds


def test_champion_fold_rule_decides_on_a_small_test_set():
    """A challenger 2.8 points behind on the test split (one row of 36) but not behind on the folds
    is promoted; one behind on every fold is not, whatever the test split says."""
    champion = scores("champion v1", 0.972, CHAMP)
    tied = scores("v2", 0.944, (0.96, 0.95, 0.95, 0.96, 0.96))
    d = gate.decide(tied, champion, 0.9, 0.002)
    assert d.promote and d.rule == "champion-folds" and "tie" in d.reasons[-1]
    worse = scores("v3", 1.0, (0.90, 0.92, 0.89, 0.93, 0.91))
    d = gate.decide(worse, champion, 0.9, 0.002)
    assert not d.promote and d.rule == "champion-folds" and "loses to the champion" in d.reasons[-1]


def test_baseline_rule_needs_a_win():
    base = scores("baseline svc", 0.989, CHAMP)
    win = scores("v1", 0.99, (0.98, 0.99, 0.97, 0.99, 0.98))
    tie = scores("v1", 0.99, (0.96, 0.95, 0.95, 0.96, 0.96))
    assert gate.decide(win, None, 0.9, 0.002, base, 0.0).promote
    d = gate.decide(tie, None, 0.9, 0.002, base, 0.0)
    assert not d.promote and d.rule == "baseline-folds" and "does not beat the best baseline" in d.reasons[1]
    # on the test split alone (no cv): a higher accuracy by the margin
    assert gate.decide(scores("v1", 0.98), None, 0.9, 0.002, scores("b", 0.97), 0.005).promote
    d = gate.decide(scores("v1", 0.98), None, 0.9, 0.002, scores("b", 0.97), 0.02)
    assert not d.promote and d.rule == "baseline-test"
    # rule off: compared and reported, not deciding
    d = gate.decide(tie, None, 0.9, 0.002, base, None)
    assert d.promote and "rule off" in d.reasons[1] and d.comparisons["baseline"].verdict == "tie"


def test_rules_in_order_floor_baseline_champion():
    champion = scores("champion", 0.99, CHAMP)
    base = scores("baseline", 0.99, CHAMP)
    low = scores("v1", 0.5, (0.5,) * 5)
    d = gate.decide(low, champion, 0.9, 0.002, base, 0.0)
    assert not d.promote and d.rule == "floor" and len(d.reasons) == 3  # every rule reported


def test_choose_gives_a_tie_to_the_baseline():
    base = scores("baseline", 0.97, CHAMP)
    assert gate.choose(scores("net", 0.97, (0.96, 0.95, 0.95, 0.96, 0.96)), base, None, 0.95).verdict == "tie"
    assert gate.choose(scores("net", 0.99, (0.98, 0.99, 0.97, 0.99, 0.98)), base, None, 0.95).verdict == "win"
    assert gate.choose(scores("net", 0.97), scores("baseline", 0.97), None, 0.95).verdict == "tie"


@pytest.mark.parametrize(
    "challenger,champion,promote",
    [(0.95, None, True), (0.85, None, False), (0.980, 0.981, True), (0.975, 0.981, False), (0.99, 0.98, True)],
)
def test_test_split_rules_keep_their_behaviour_and_wording(challenger, champion, promote):
    d = registry.decide(challenger, champion, floor=0.9, tolerance=0.002)
    assert d.promote is promote
    if champion is not None:
        op = ">=" if challenger >= champion - 0.002 else "<"
        assert d.reasons[-1] == f"accuracy {challenger:.4f} {op} champion {champion:.4f} - tolerance 0.0020"
        assert d.rule == "champion-test"

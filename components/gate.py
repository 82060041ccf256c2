"""The promotion gate, pure: accuracies in, a decision with its reasons and deciding rule out.

A model's Scores are its test accuracy, measured on the current test split, and, where cross-
validation ran, its accuracy on each cv fold. Two models' fold scores are comparable only on the
same folds of the same data (the same fold_key): then the comparison is paired, fold by fold, with
a one-sided paired t-test at promote.fold_confidence; otherwise it is the two test accuracies. On a
small test set (36 rows for wine: one row is 2.8 points) the folds are what counts.

The rules, in order:
  floor     the challenger's test accuracy reaches promote.accuracy_floor
  baseline  (promote.beat_baseline_by set) it beats the best baseline by that margin: on the folds a
            significant win, on the test split a higher accuracy; a tie is not a win
  champion  it does not lose to the current champion by more than promote.tolerance: on the folds
            a significant loss rejects, a tie passes (the newer model wins a tie, as on the test split)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EPS = 1e-9  # accuracies closer than this are equal (they are ratios of row counts)


@dataclass(frozen=True)
class Scores:
    label: str  # how reasons name it: "challenger v4 (fp32)", "champion v2", "baseline svc"
    test: float | None  # accuracy on the current test split
    folds: tuple[float, ...] = ()  # accuracy on each cv fold, in fold order
    fold_key: str | None = None  # which folds (components/folds.py fold_key); None: no fold scores

    @property
    def fold_mean(self) -> float | None:
        return float(np.mean(self.folds)) if self.folds else None

    @property
    def fold_std(self) -> float | None:  # population std, as the cv stage reports it
        return float(np.std(self.folds)) if self.folds else None


@dataclass(frozen=True)
class Comparison:
    """a against b (+ margin): verdict win | tie | loss, by the folds or by the test split."""

    rule: str  # "folds" | "test"
    verdict: str  # "win" | "tie" | "loss"
    diff: float  # mean over folds of a - b (folds), or a - b (test)
    margin: float  # a must beat b + margin (negative: may trail by that much)
    p_value: float | None  # paired t-test, one-sided in the direction of diff - margin (folds only)
    n: int  # folds compared (folds) or 0 (test)
    text: str

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "verdict": self.verdict,
            "diff": self.diff,
            "margin": self.margin,
            "p_value": self.p_value,
            "n": self.n,
            "text": self.text,
        }


def paired(a, b, margin: float, confidence: float) -> tuple[str, float, float]:
    """Fold scores a and b (same folds, same order) -> (verdict, mean of a - b, p-value). The test is
    the paired t-test of a - margin against b, one-sided in the direction of its mean difference:
    win / loss when a - b - margin is above / below 0 at that confidence, else tie. One-sided,
    because each rule asks a directional question (does it beat the baseline? is it worse than the
    champion?). With 5 folds a two-sided test put digits' CNN, 1.8-1.9 points above a logistic
    regression, at p 0.048-0.049 on two of three seeds: at the edge of 0.95
    (benchmarks/results/HISTORY.md, issue 23)."""
    from scipy.stats import ttest_rel

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or len(a) < 2:
        raise ValueError(f"paired comparison needs two equal-length score lists of >= 2 folds, got {len(a)}, {len(b)}")
    d = a - b - margin
    mean = float(d.mean())
    if np.ptp(d) < EPS:  # identical differences: the t statistic is 0/0 or +-inf
        p = 1.0 if abs(mean) < EPS else 0.0
    else:
        p = float(ttest_rel(a - margin, b, alternative="greater" if mean > 0 else "less").pvalue)
    verdict = "tie" if p >= 1.0 - confidence or abs(mean) < EPS else ("win" if mean > 0 else "loss")
    return verdict, float((a - b).mean()), p


def compare(a: Scores, b: Scores, margin: float, confidence: float) -> Comparison:
    """a against b: on the folds when both have scores on the same folds, else on the test split."""
    same_folds = a.fold_key is not None and a.fold_key == b.fold_key and len(a.folds) == len(b.folds) >= 2
    if same_folds:
        verdict, diff, p = paired(a.folds, b.folds, margin, confidence)
        text = (
            f"{len(a.folds)} cv folds, {a.label} {a.fold_mean:.4f} +- {a.fold_std:.4f} vs {b.label} "
            f"{b.fold_mean:.4f} +- {b.fold_std:.4f}: mean difference {diff:+.4f}"
            + (f" (margin {margin:+.4f})" if margin else "")
            + f", paired t-test p={p:.3g} at confidence {confidence:g}: {verdict}"
        )
        return Comparison("folds", verdict, diff, margin, p, len(a.folds), text)
    if a.test is None or b.test is None:
        raise ValueError(f"no common scores: {a.label} vs {b.label}")
    d = a.test - b.test - margin
    verdict = "tie" if abs(d) < EPS else ("win" if d > 0 else "loss")
    text = (
        f"test split, {a.label} {a.test:.4f} vs {b.label} {b.test:.4f}"
        + (f" (margin {margin:+.4f})" if margin else "")
        + f": {verdict}"
    )
    return Comparison("test", verdict, a.test - b.test, margin, None, 0, text)


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)
    rule: str = ""  # the rule that decided: the first that failed, else the champion rule that passed
    comparisons: dict[str, Comparison] = field(default_factory=dict)  # "champion", "baseline"


def decide(
    challenger: Scores,
    champion: Scores | None,
    floor: float,
    tolerance: float,
    baseline: Scores | None = None,
    beat_baseline_by: float | None = None,
    confidence: float = 0.95,
) -> Decision:
    """Floor, then baseline (when beat_baseline_by is set), then champion; every rule is reported.
    A baseline with beat_baseline_by None is compared and reported, but does not decide."""
    reasons, failed, comps = [], [], {}
    acc = challenger.test
    if acc >= floor:
        reasons.append(f"accuracy {acc:.4f} >= floor {floor:.4f}")
    else:
        failed.append("floor")
        reasons.append(f"accuracy {acc:.4f} < floor {floor:.4f}")
    if baseline is not None:
        c = comps["baseline"] = compare(challenger, baseline, beat_baseline_by or 0.0, confidence)
        if beat_baseline_by is None:
            reasons.append(f"vs best baseline (rule off, promote.beat_baseline_by null): {c.text}")
        elif c.verdict == "win":
            reasons.append(f"beats the best baseline by {beat_baseline_by:.4f}: {c.text}")
        else:
            failed.append(f"baseline-{c.rule}")
            reasons.append(f"does not beat the best baseline by {beat_baseline_by:.4f}: {c.text}")
    if champion is None:
        champ_rule = "no-champion"
        reasons.append("no current champion")
    else:
        c = comps["champion"] = compare(challenger, champion, -tolerance, confidence)
        champ_rule = f"champion-{c.rule}"
        if c.rule == "test":  # the gate's original wording
            ok = c.verdict != "loss"
            op = ">=" if ok else "<"
            reasons.append(f"accuracy {acc:.4f} {op} champion {champion.test:.4f} - tolerance {tolerance:.4f}")
        elif c.verdict == "loss":
            reasons.append(f"loses to the champion by more than tolerance {tolerance:.4f}: {c.text}")
        else:
            reasons.append(f"not worse than the champion by more than tolerance {tolerance:.4f}: {c.text}")
        if c.verdict == "loss":
            failed.append(champ_rule)
    return Decision(not failed, reasons, failed[0] if failed else champ_rule, comps)


def choose(network: Scores, baseline: Scores, beat_baseline_by: float | None, confidence: float) -> Comparison:
    """promote.allow_baseline: the network goes to the gate only when it beats the best baseline (by
    beat_baseline_by, else by 0); a tie goes to the baseline, the simpler model."""
    return compare(network, baseline, beat_baseline_by or 0.0, confidence)

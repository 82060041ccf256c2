import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from components.evaluate import classification_metrics, confusion, softmax
from components.registry import decide


def test_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    proba = softmax(rng.normal(size=(200, 4)) * 2)
    y = rng.integers(0, 4, 200)
    m = classification_metrics(y, proba)
    pred = proba.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["roc_auc_ovr"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr"))
    np.testing.assert_array_equal(confusion(y, pred, 4), confusion_matrix(y, pred, labels=range(4)))


def test_binary_auc_uses_positive_column():
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert classification_metrics(np.array([0, 1, 0, 1]), proba)["roc_auc_ovr"] == 1.0


@pytest.mark.parametrize(
    "challenger,champion,promote",
    [
        (0.95, None, True),  # first model above the floor
        (0.85, None, False),  # below the floor
        (0.980, 0.981, True),  # within tolerance
        (0.975, 0.981, False),  # trails by more than the tolerance
        (0.99, 0.98, True),  # better
    ],
)
def test_gate(challenger, champion, promote):
    d = decide(challenger, champion, floor=0.9, tolerance=0.002)
    assert d.promote is promote and d.reasons

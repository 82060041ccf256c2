"""A text Transformer trained by 2 gloo DDP ranks under torch's elastic agent (real processes) against
the same training in one process: length-bucketed batches, trimmed per rank, must give the same model.

The ranks run this file as a script (`python -m tests.e2e.test_transformer_ddp OUT`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from components import distributed, engine, models
from components.config import TrainConfig
from tests.model.test_transformer import text_spec, token_data

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# dropout 0: every rank draws its own dropout masks, so only a deterministic model can match 1 rank
CFG = TrainConfig(epochs=3, batch_size=32, lr=1e-2, num_threads=1, checkpoint_every=0, bucket_batches=4)


def fit(dist: distributed.Dist) -> tuple[torch.nn.Module, engine.History]:
    X, y = token_data(320)
    torch.manual_seed(0)
    model = models.build(text_spec())
    hist = engine.fit(model, X[:256], y[:256], X[256:], y[256:], CFG, 0, progress=False, dist=dist)
    return model, hist


def test_two_rank_ddp_trains_the_same_transformer_as_one_rank(tmp_path):
    out = tmp_path / "two.pt"
    distributed.launch(["-m", "tests.e2e.test_transformer_ddp", str(out)], nproc=2, max_restarts=0)
    two = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    model, hist = fit(distributed.single())
    assert two["world"] == 2
    # the same steps up to float summation order (gradients averaged over 2 ranks). The key bias (in qkv.bias)
    # has a gradient of exactly 0 in exact arithmetic (softmax ignores a shift shared by all keys): AdamW turns
    # its rounding noise into lr-sized steps, so it alone may differ by more; the outputs do not
    diff = {k: float((two["state"][k] - v).abs().max()) for k, v in model.state_dict().items()}
    assert max(d for k, d in diff.items() if not k.endswith("qkv.bias")) < 5e-4, diff
    check = models.build(text_spec()).eval()
    check.load_state_dict(two["state"])
    X, _ = token_data(320)
    with torch.no_grad():
        x = torch.from_numpy(X)
        a, b = check(x), model.eval()(x)
    assert float((a - b).abs().mean()) < 2e-3 and float((a - b).abs().max()) < 0.1
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.99
    for a, b in zip(two["epochs"], hist.epochs):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-3) and a["val_accuracy"] == b["val_accuracy"]
    assert hist.epochs[-1]["val_accuracy"] > 0.6  # it learned (3 classes: chance 0.33)


if __name__ == "__main__":  # one rank
    torch.set_num_threads(1)
    d = distributed.init(60)
    try:
        model, hist = fit(d)
        if d.is_main:
            torch.save({"world": d.world, "state": model.state_dict(), "epochs": hist.epochs}, Path(sys.argv[1]))
    finally:
        distributed.shutdown()

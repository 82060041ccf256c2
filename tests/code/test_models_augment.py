import pickle

import numpy as np
import pytest
import torch

from components import augment, models
from components.config import load_config
from components.errors import MlpipeError


def spec_for(shape, kind):
    return models.model_args(load_config(None).model, shape, 3, kind)


@pytest.mark.parametrize("shape,kind", [((1, 8, 8), "image"), ((3, 12, 10), "image"), ((7,), "tabular")])
def test_save_load_roundtrip(tmp_path, shape, kind):
    torch.manual_seed(0)
    spec = spec_for(shape, kind)
    m = models.build(spec).eval()
    m.norm.fit(np.random.default_rng(0).normal(size=(20, *shape)).astype(np.float32))
    x = torch.randn(4, *shape)
    models.save(m, spec, ["a", "b", "c"], tmp_path / "m.pt")
    back, spec2, classes = models.load(tmp_path / "m.pt")
    assert spec2 == spec and classes == ["a", "b", "c"]
    torch.testing.assert_close(back(x), m(x))


def test_cnn_refused_for_tabular():
    with pytest.raises(MlpipeError, match="cnn needs image data"):
        models.model_args(load_config(None, ["model.kind=cnn"]).model, (7,), 3, "tabular")


class Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": models.FORMAT, "x": Boom()}, path)
    with pytest.raises(MlpipeError, match="not a loadable mlpipe model"):
        models.load(path)
    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(MlpipeError, match="not a loadable mlpipe model"):
        models.load(path)


def test_image_augment_keeps_shape_and_is_seeded():
    cfg = load_config(None, ["augment.noise_std=0.05", "augment.cutout=2", "augment.flip=true"]).augment
    aug = augment.build_augment(cfg, "image", np.zeros((4, 1, 8, 8), np.float32), (0.0, 16.0))
    x = torch.rand(16, 1, 8, 8) * 16
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_shift_only_moves_pixels():
    cfg = load_config(None, ["augment.rotation=0", "augment.shift=1"]).augment
    aug = augment.build_augment(cfg, "image", np.zeros((1, 1, 8, 8), np.float32), (0.0, 1.0))
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0  # a blob away from the border: shifting keeps its mass
    y = aug(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert (y != x).any()


def test_disabled_and_tabular():
    off = load_config(None, ["augment.enabled=false"]).augment
    assert augment.build_augment(off, "image", np.zeros((2, 1, 4, 4), np.float32)) is None
    tab = augment.build_augment(
        load_config(None).augment, "tabular", np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    )
    x = torch.zeros(10, 3)
    assert tab(x, torch.Generator().manual_seed(0)).abs().max() > 0

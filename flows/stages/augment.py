"""augment: the training-time augmentation policy (data/augmented/policy.json) and a preview image.
The transforms themselves run on the fly inside training, on training batches only."""

from __future__ import annotations

from pathlib import Path

from components import augment, data, tracking
from components.config import Config
from components.fileio import write_json
from flows.paths import Paths


def _preview(ds: data.Prepared, aug, seed: int, path: Path) -> None:
    """Originals (top row) and their augmented versions (below): a visual check of the policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    n = min(8, len(ds.X_train))
    x = torch.as_tensor(ds.X_train[:n])
    g = torch.Generator().manual_seed(seed)
    rows = [x] + [aug(x, g) if aug else x for _ in range(3)]
    fig, axes = plt.subplots(len(rows), n, figsize=(n, len(rows)), squeeze=False)
    for r, batch in enumerate(rows):
        for c in range(n):
            img = batch[c].numpy()
            axes[r][c].imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0).clip(0, 1), cmap="gray")
            axes[r][c].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def run(cfg: Config, paths: Paths, parent: str | None = None) -> dict:
    with tracking.stage_run("augment", parent):
        ds = data.load_prepared(paths.prepared, mmap=True)
        policy = augment.describe(cfg.augment, ds.meta.kind)
        paths.augmented.mkdir(parents=True, exist_ok=True)
        if ds.meta.kind == "image":
            aug = augment.build_augment(cfg.augment, "image", ds.X_train, ds.meta.value_range)
            _preview(ds, aug, cfg.seed, paths.augment_preview)
            tracking.log_artifact(paths.augment_preview, "augment")
        write_json(paths.augment_policy, {"data_hash": ds.meta.content_hash, **policy})
        tracking.log_params(cfg.section("augment"))
        tracking.log_artifact(paths.augment_policy, "augment")
        return policy

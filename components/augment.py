"""Augmentation of training batches, on the fly. Never applied to validation or test data:
the training loop is the only caller, and only on its training batches."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from components.config import AugmentConfig


class ImageAugment:
    """Random shift + rotation (one affine resample), optional flip, gaussian noise, cutout."""

    def __init__(self, cfg: AugmentConfig, value_range: float):
        self.cfg = cfg
        self.value_range = value_range  # max - min of pixel values, scales the noise

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # (B, C, H, W)
        cfg, (B, _, H, W) = self.cfg, x.shape
        if cfg.shift or cfg.rotation:
            angle = (torch.rand(B, generator=g) * 2 - 1) * math.radians(cfg.rotation)
            # affine_grid works in [-1, 1] units: one pixel is 2/size
            tx = torch.randint(-cfg.shift, cfg.shift + 1, (B,), generator=g) * 2.0 / W
            ty = torch.randint(-cfg.shift, cfg.shift + 1, (B,), generator=g) * 2.0 / H
            cos, sin = torch.cos(angle), torch.sin(angle)
            theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
            grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if cfg.flip:
            flip = torch.rand(B, generator=g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        if cfg.noise_std:
            x = x + torch.randn(x.shape, generator=g) * (cfg.noise_std * self.value_range)
        if cfg.cutout:
            s = min(cfg.cutout, H, W)
            top = torch.randint(0, H - s + 1, (B,), generator=g)
            left = torch.randint(0, W - s + 1, (B,), generator=g)
            rows = torch.arange(H)[None, :, None]
            cols = torch.arange(W)[None, None, :]
            hole = (
                (rows >= top[:, None, None])
                & (rows < top[:, None, None] + s)
                & (cols >= left[:, None, None])
                & (cols < left[:, None, None] + s)
            )
            x = x.masked_fill(hole[:, None], 0.0)
        return x


class TabularNoise:
    """x + N(0, (k * feature_std)^2)."""

    def __init__(self, std_factor: float, feature_std: torch.Tensor):
        self.scale = std_factor * feature_std  # (F,)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # (B, F)
        return x + torch.randn(x.shape, generator=g) * self.scale


class TextAugment:
    """Token dropout, [MASK] replacement and one deleted span per text, on (B, L) token ids: [CLS] (position
    0) and padding are never touched; dropped and deleted tokens close up and padding fills the end, so a
    row stays [CLS] + tokens + padding (the attention mask X != PAD_ID stays right). Probabilities come
    from the augment section (the tuner's aug_strength scales them, components/tune.scale_augment)."""

    def __init__(self, dropout: float, mask: float, span: float):
        self.dropout, self.mask, self.span = dropout, mask, span

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:  # (B, L) int ids
        from components.text import CLS_ID, MASK_ID, PAD_ID

        B, L = x.shape
        ids = x.long()
        pos = torch.arange(L)[None, :]  # (1, L)
        body = (ids != PAD_ID) & (pos > 0) & (ids != CLS_ID)  # the text's own tokens
        n = body.sum(1, keepdim=True)  # (B, 1) tokens per row, [CLS] excluded
        keep = torch.ones_like(body)
        if self.dropout:
            keep &= ~(body & (torch.rand((B, L), generator=g) < self.dropout))
        if self.span:
            # one span per row: length uniform in [0, span * n], start uniform over the text's tokens
            length = (torch.rand((B, 1), generator=g) * (self.span * n.float() + 1)).floor().long().clamp(max=n)
            start = 1 + (torch.rand((B, 1), generator=g) * (n - length + 1).float()).floor().long()
            keep &= ~(body & (pos >= start) & (pos < start + length))
        if self.mask:
            ids = torch.where(body & keep & (torch.rand((B, L), generator=g) < self.mask), MASK_ID, ids)
        if bool(keep.all()):
            return ids.to(x.dtype)
        # close up: kept positions first, in order (a stable sort on "dropped"); the tail becomes padding
        order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
        out = torch.gather(torch.where(keep, ids, PAD_ID), 1, order)
        return out.to(x.dtype)


def build_augment(cfg: AugmentConfig, kind: str, X_train, value_range=None):
    """The training-batch transform for this dataset, or None when augmentation is off."""
    if not cfg.enabled:
        return None
    if kind == "text":
        if not (cfg.token_dropout or cfg.token_mask or cfg.span_delete):
            return None
        return TextAugment(cfg.token_dropout, cfg.token_mask, cfg.span_delete)
    x = torch.as_tensor(np.array(X_train[: min(len(X_train), 10_000)]))  # copy: may be a read-only memmap
    if kind == "image":
        span = (value_range[1] - value_range[0]) if value_range else float(x.max() - x.min())
        if not (cfg.shift or cfg.rotation or cfg.flip or cfg.noise_std or cfg.cutout):
            return None
        return ImageAugment(cfg, float(span))
    if cfg.tabular_noise_std == 0:
        return None
    return TabularNoise(cfg.tabular_noise_std, x.reshape(len(x), -1).std(0))


def describe(cfg: AugmentConfig, kind: str) -> dict:
    """The resolved policy, as written by the augment stage."""
    if not cfg.enabled:
        return {"kind": kind, "transforms": []}
    if kind == "image":
        t = [
            ("shift_px", cfg.shift),
            ("rotation_deg", cfg.rotation),
            ("flip", cfg.flip),
            ("noise_std", cfg.noise_std),
            ("cutout_px", cfg.cutout),
        ]
    elif kind == "text":
        t = [("token_dropout", cfg.token_dropout), ("token_mask", cfg.token_mask), ("span_delete", cfg.span_delete)]
    else:
        t = [("tabular_noise_std", cfg.tabular_noise_std)]
    return {"kind": kind, "transforms": [{"name": n, "value": v} for n, v in t if v]}

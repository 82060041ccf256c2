"""Transformer encoders: a text classifier over token ids and a ViT over image patches.

Both are pre-norm encoders (LayerNorm -> attention -> residual, LayerNorm -> GELU FFN -> residual)
whose attention is torch.nn.functional.scaled_dot_product_attention, a final LayerNorm, CLS or
mean pooling and a linear head. The text model takes only token ids (the prepared layout of
components/text.py: [CLS] first, right-padded with PAD_ID) and derives the key padding mask from
them inside forward, so an exported ONNX graph takes ids alone and masks padding itself.

Structured pruning narrows single blocks (fewer attention heads, a narrower FFN), so a block's
head count and FFN width may differ from the config's: `block_heads` / `block_ff` hold them,
one entry per block, when they do (None: every block as configured)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from components.errors import MlpipeError
from components.text import CLS_ID, PAD_ID

ARCHS = ("transformer", "vit")
STEMS = ("patch", "conv")  # vit: how pixels become patch embeddings


class Block(nn.Module):
    """One pre-norm encoder block; heads * head_dim need not equal d_model (pruned heads)."""

    def __init__(self, d_model: int, heads: int, head_dim: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * heads * head_dim)  # rows: [q heads | k heads | v heads]
        self.proj = nn.Linear(heads * head_dim, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, ff)
        self.fc2 = nn.Linear(ff, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape  # (B, T, D); mask (B, 1, 1, T) bool, True = a key that takes part
        p = self.dropout if self.training else 0.0
        q, k, v = self.qkv(self.ln1(x)).reshape(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, hd)
        x = x + F.dropout(self.proj(a.transpose(1, 2).reshape(B, T, self.heads * self.head_dim)), p, self.training)
        h = F.dropout(F.gelu(self.fc1(self.ln2(x))), p, self.training)
        return x + F.dropout(self.fc2(h), p, self.training)


class Encoder(nn.Module):
    """Blocks + final LayerNorm + pooling + head; the subclasses embed their inputs."""

    def __init__(self, n_classes, d_model, heads, layers, ff, dropout, pooling, block_heads, block_ff):
        super().__init__()
        if d_model % heads:
            raise MlpipeError(f"model.d_model ({d_model}) must be a multiple of model.heads ({heads})")
        if pooling not in ("cls", "mean"):
            raise MlpipeError(f"model.pooling: {pooling!r} is not one of cls, mean")
        block_heads = list(block_heads or [heads] * layers)
        block_ff = list(block_ff or [ff] * layers)
        if not len(block_heads) == len(block_ff) == layers:
            raise MlpipeError(f"block_heads / block_ff need one entry per layer ({layers})")
        self.pooling, self.dropout = pooling, dropout
        self.blocks = nn.ModuleList(
            Block(d_model, h, d_model // heads, f, dropout) for h, f in zip(block_heads, block_ff)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_classes)

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def encode(self, h: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) embeddings, (B, T) bool of real positions or None -> (B, D) pooled features."""
        mask = None if keys is None else keys[:, None, None, :]
        for block in self.blocks:
            h = block(h, mask)
        h = self.ln_f(h)
        if self.pooling == "cls":
            return h[:, 0]
        if keys is None:
            return h.mean(1)
        w = keys.unsqueeze(-1).to(h.dtype)
        return (h * w).sum(1) / w.sum(1).clamp_min(1.0)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(pooled, self.dropout, self.training))


class TextTransformer(Encoder):
    """Token ids (B, T <= max_length), any integer dtype, PAD_ID = padding -> (B, n_classes) logits."""

    def __init__(
        self,
        in_shape,
        n_classes,
        vocab_size,
        d_model=128,
        heads=4,
        layers=2,
        ff=256,
        dropout=0.1,
        pooling="cls",
        block_heads=None,
        block_ff=None,
    ):
        super().__init__(n_classes, d_model, heads, layers, ff, dropout, pooling, block_heads, block_ff)
        (self.max_length,) = in_shape
        self.tok = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        self.pos = nn.Parameter(torch.zeros(1, self.max_length, d_model))
        self._init()
        nn.init.normal_(self.pos, std=0.02)
        with torch.no_grad():
            self.tok.weight[PAD_ID].zero_()

    def example_input(self, batch: int = 2) -> torch.Tensor:
        """A valid input (for export and counting): [CLS], a few tokens, then padding."""
        ids = torch.zeros((batch, self.max_length), dtype=torch.int64)
        ids[:, 0] = CLS_ID
        ids[:, 1 : max(2, self.max_length // 2)] = min(5, self.tok.num_embeddings - 1)
        return ids

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.long()  # (B, T); a float copy of ids (an array cast upstream) is still exact below 2**24
        T = ids.shape[1]
        if not torch.jit.is_tracing() and T > self.max_length:
            raise MlpipeError(f"input has {T} tokens per row, the model takes at most {self.max_length}")
        # position 0 always counts as a key: it is [CLS] in real rows, and an all-padding row then
        # attends to it instead of to nothing (which gives NaN)
        keys = (ids != PAD_ID) | (torch.arange(T, device=ids.device) == 0)
        h = self.tok(ids) + self.pos[:, :T]
        h = F.dropout(h, self.dropout, self.training)
        return self.classify(self.encode(h, keys))


class ViT(Encoder):
    """Images (B, C, H, W) -> (B, n_classes): patch_size x patch_size patches (the image zero-padded at the
    bottom/right to a multiple of it), a learned [CLS] token and learned positions. `norm` standardizes the
    input (models.ViT sets a fitted Standardize; here it is the identity).

    stem "patch": each patch linearly embedded (one conv with kernel = stride = patch_size), the original ViT;
    "conv": two 3x3 convolutions (d_model/2 channels, BatchNorm, GELU) at full resolution before that patch
    embedding, the convolutional stem that lets ViTs learn from small data (Xiao et al. 2021, "Early
    convolutions help transformers see better"; benchmarks/vit.py)."""

    def __init__(
        self,
        in_shape,
        n_classes,
        patch_size=4,
        d_model=128,
        heads=4,
        layers=2,
        ff=256,
        dropout=0.1,
        pooling="cls",
        block_heads=None,
        block_ff=None,
        stem="patch",
    ):
        super().__init__(n_classes, d_model, heads, layers, ff, dropout, pooling, block_heads, block_ff)
        if stem not in STEMS:
            raise MlpipeError(f"model.stem: {stem!r} is not one of {', '.join(STEMS)}")
        c, h, w = in_shape
        p = self.patch_size = int(patch_size)
        self.pad_h, self.pad_w = -h % p, -w % p
        n = math.ceil(h / p) * math.ceil(w / p)
        self.norm: nn.Module = nn.Identity()
        self.stem: nn.Module = nn.Identity()
        if stem == "conv":
            mid = max(8, d_model // 2)
            self.stem = nn.Sequential(
                nn.Conv2d(c, mid, 3, padding=1, bias=False),
                nn.BatchNorm2d(mid),
                nn.GELU(),
                nn.Conv2d(mid, mid, 3, padding=1, bias=False),
                nn.BatchNorm2d(mid),
                nn.GELU(),
            )
            c = mid
        self.patch = nn.Conv2d(c, d_model, p, stride=p)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = nn.Parameter(torch.zeros(1, n + 1, d_model))
        self._init()
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if self.pad_h or self.pad_w:
            x = F.pad(x, (0, self.pad_w, 0, self.pad_h))
        h = self.patch(self.stem(x)).flatten(2).transpose(1, 2)  # (B, n patches, D)
        cls = self.cls.to(h.dtype) + torch.zeros_like(h[:, :1])  # (B, 1, D); an exported batch axis stays dynamic
        h = torch.cat([cls, h], 1) + self.pos
        h = F.dropout(h, self.dropout, self.training)
        return self.classify(self.encode(h, None))


# ---------------------------------------------------------------- structured pruning, fewer layers


def _block_sizes(spec: dict) -> tuple[list[int], list[int]]:
    a = spec["args"]
    return list(a.get("block_heads") or [a["heads"]] * a["layers"]), list(a.get("block_ff") or [a["ff"]] * a["layers"])


def narrow_spec(spec: dict, keep: float) -> dict:
    """Every block with round(keep * heads) attention heads and round(keep * ff) FFN units (at least 1)."""
    heads, ff = _block_sizes(spec)
    args = dict(spec["args"])
    args["block_heads"] = [max(1, round(h * keep)) for h in heads]
    args["block_ff"] = [max(1, round(f * keep)) for f in ff]
    return {**spec, "args": args}


def head_importance(block: Block) -> torch.Tensor:
    """(heads,) score: norm of the head's q, k, v rows times the norm of its columns in the output projection."""
    H, hd = block.heads, block.head_dim
    w = block.qkv.weight.detach().reshape(3, H, hd, -1)
    out = block.proj.weight.detach().reshape(-1, H, hd)
    return w.pow(2).sum((0, 2, 3)).sqrt() * out.pow(2).sum((0, 2)).sqrt()


def ffn_importance(block: Block) -> torch.Tensor:
    """(ff,) score: norm of the unit's input weights times the norm of its output weights."""
    return block.fc1.weight.detach().norm(dim=1) * block.fc2.weight.detach().norm(dim=0)


@torch.no_grad()
def _copy_block(old: Block, new: Block) -> None:
    """new <- the highest-scoring heads and FFN units of old (new's sizes say how many)."""
    hd = old.head_dim
    heads = head_importance(old).topk(new.heads).indices.sort().values
    units = ffn_importance(old).topk(new.fc1.out_features).indices.sort().values
    cols = (heads[:, None] * hd + torch.arange(hd)).flatten()  # the kept heads' features
    rows = torch.cat([cols + i * old.heads * hd for i in range(3)])  # the same in q, k and v
    new.ln1.load_state_dict(old.ln1.state_dict())
    new.ln2.load_state_dict(old.ln2.state_dict())
    new.qkv.weight.copy_(old.qkv.weight[rows])
    new.qkv.bias.copy_(old.qkv.bias[rows])
    new.proj.weight.copy_(old.proj.weight[:, cols])
    new.proj.bias.copy_(old.proj.bias)
    new.fc1.weight.copy_(old.fc1.weight[units])
    new.fc1.bias.copy_(old.fc1.bias[units])
    new.fc2.weight.copy_(old.fc2.weight[:, units])
    new.fc2.bias.copy_(old.fc2.bias)


def shrink(model: Encoder, spec: dict, new_spec: dict, build) -> Encoder:
    """A model built from new_spec (fewer heads / FFN units per block, possibly fewer blocks: the first ones
    are kept) holding `model`'s most important heads and units; everything outside the blocks (embeddings,
    norms, head) is copied. build(spec) -> module (models.build)."""
    new = build(new_spec).eval()
    block_keys = {k for k in new.state_dict() if k.startswith("blocks.")}
    new.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k not in block_keys and k in new.state_dict()}, strict=False
    )
    for old_b, new_b in zip(model.blocks, new.blocks):
        _copy_block(old_b, new_b)
    return new


def student_spec(spec: dict, keep: float, drop_blocks: int) -> dict:
    """narrow_spec with the last drop_blocks blocks removed (at least one left)."""
    s = narrow_spec(spec, keep)
    a = s["args"]
    a["layers"] = max(1, a["layers"] - drop_blocks)
    a["block_heads"], a["block_ff"] = a["block_heads"][: a["layers"]], a["block_ff"][: a["layers"]]
    return s

"""The Fusion Projector: visual tokens ask, E3FP geometry tokens answer.

Visual tokens (the DeepEncoder's 256 x 2048) are the queries of a multi-head cross-attention whose
keys and values are E3FP tokens: one per heavy atom and shell level, embedded from a table of
`bits + 1` entries (the last is padding) plus a level embedding. A feed-forward block follows;
both have pre-norms and residuals, and the output is at the LLM's hidden size.

Keys always include one learned "null" token that is never masked, so a molecule whose E3FP tokens
are all padding (no conformer, or the zeroed ablation) attends to it and stays finite; padding keys
get exactly zero weight, so padding a molecule never changes its output.

With `size_features`, every query also gets an embedding of the molecule's heavy-atom count (the
atoms with an E3FP identifier), as sines and cosines of its linear and log scales: a softmax
average over the atoms' tokens is the same for a molecule and its twice-repeated self, so the count
that mass, area and complexity grow with is otherwise lost (on ChEBI-20, the count alone predicts
the molecular weight to 22.6 g/mol MAE, the mean baseline is 250). The paper has no such input; the
`cpu` preset uses it, because its 128-px drawings do not show a large molecule's size either.
With `e3fp_sum`, every query also gets a projection of the *sum* of the molecule's E3FP tokens (over
SIZE_SCALE): TPSA and Crippen's logP are sums of per-atom contributions by atom environment, which
is what a sum of per-atom identifiers encodes and a mean (attention) divides away. Not in the paper
either; the `cpu` preset uses it.

Variants for the paper's ablations, one class each (`build_projector` picks it from the spec):
`fusion` (default: CrossAttentionProjector), `fusion_zero_e3fp` (the same module with every E3FP token
replaced by padding), `concat` (the masked mean of the E3FP tokens concatenated to each visual token),
`linear` (image only). Every variant is built in the same order under the same attribute names, so
a checkpoint's weights and a seeded initialisation do not depend on how the classes are arranged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SIZE_SCALE = 256  # atoms at which the linear size feature reaches 1 (featurize.conformer.max_heavy_atoms is 250)
SIZE_FREQUENCIES = 8  # sines and cosines at pi * 2**k, k < 8, of each scale: one atom apart is a quarter turn


@dataclass(frozen=True)
class FusionSpec:
    visual_dim: int  # DeepEncoder token width (2048)
    hidden_size: int  # the LLM's
    e3fp_bits: int  # identifiers are in [0, bits); bits itself is the padding index
    e3fp_levels: int = 4
    num_heads: int = 8
    ffn_mult: int = 4
    dropout: float = 0.0
    variant: str = "fusion"
    size_features: bool = False
    e3fp_sum: bool = False

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown fusion variant {self.variant!r}: expected one of {', '.join(VARIANTS)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")


def size_features(atoms: torch.Tensor) -> torch.Tensor:
    """[B] heavy-atom counts -> [B, 34]: the count on a linear and a log scale, each with sines and
    cosines, so 100 and 101 atoms differ as clearly as 10 and 11."""
    atoms = atoms.float()
    scales = torch.stack([atoms / SIZE_SCALE, torch.log1p(atoms) / torch.log1p(torch.tensor(SIZE_SCALE))], dim=-1)
    angles = scales[..., None] * (torch.pi * 2.0 ** torch.arange(SIZE_FREQUENCIES, device=atoms.device))
    return torch.cat([scales, angles.sin().flatten(1), angles.cos().flatten(1)], dim=-1)


class LinearProjector(nn.Module):
    """`linear`: the visual tokens projected to the LLM's width, no geometry."""

    def __init__(self, spec: FusionSpec):
        super().__init__()
        self.spec = spec
        self.visual_in = nn.Linear(spec.visual_dim, spec.hidden_size)

    def forward(self, visual: torch.Tensor, e3fp: torch.Tensor | None = None) -> torch.Tensor:
        """visual [B, N, visual_dim], e3fp [B, atoms, levels] -> [B, N, hidden_size]."""
        return self.visual_in(visual)


class _GeometryProjector(LinearProjector):
    """What the geometric variants share: E3FP tokens (identifier + level embeddings) and the
    optional size and sum features added to every query."""

    zero_e3fp = False

    def __init__(self, spec: FusionSpec):
        super().__init__(spec)
        h = spec.hidden_size
        self.pad_id = spec.e3fp_bits
        self.e3fp_embed = nn.Embedding(spec.e3fp_bits + 1, h, padding_idx=self.pad_id)
        self.level_embed = nn.Embedding(spec.e3fp_levels, h)
        if spec.size_features:
            self.size_in = nn.Linear(2 * (1 + 2 * SIZE_FREQUENCIES), h)
        if spec.e3fp_sum:
            self.sum_in = nn.Linear(h, h)

    def e3fp_tokens(self, e3fp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, atoms, levels] identifiers (-1: none or padding) -> ([B, atoms*levels, H], padding mask)."""
        batch, atoms, levels = e3fp.shape
        if levels != self.spec.e3fp_levels:
            raise ValueError(f"E3FP has {levels} levels per atom, the projector expects {self.spec.e3fp_levels}")
        ids = e3fp.reshape(batch, atoms * levels).long()
        padding = ids < 0
        if self.zero_e3fp:
            padding = torch.ones_like(padding)
        ids = ids.masked_fill(padding, self.pad_id)
        level = torch.arange(levels, device=e3fp.device).repeat(atoms)
        tokens = self.e3fp_embed(ids) + self.level_embed(level)[None]
        return tokens.masked_fill(padding[..., None], 0.0), padding

    def queries_and_tokens(self, visual: torch.Tensor, e3fp: torch.Tensor | None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The projected visual tokens with the molecule's size and sum features added, its E3FP
        tokens and their padding mask (no E3FP at all: one padding atom)."""
        queries = self.visual_in(visual)
        if e3fp is None:
            e3fp = torch.full((visual.shape[0], 1, self.spec.e3fp_levels), -1, device=visual.device)
        tokens, padding = self.e3fp_tokens(e3fp)
        if self.spec.size_features:
            atoms = (~padding.reshape(len(padding), -1, self.spec.e3fp_levels)).any(dim=-1).sum(dim=1)
            queries = queries + self.size_in(size_features(atoms).to(self.size_in.weight.dtype))[:, None]
        if self.spec.e3fp_sum:  # padding tokens are zero: a sum over the molecule's own tokens only
            queries = queries + self.sum_in(tokens.sum(dim=1) / SIZE_SCALE)[:, None]
        return queries, tokens, padding


class ConcatProjector(_GeometryProjector):
    """`concat`: each visual token concatenated with the masked mean of the E3FP tokens."""

    def __init__(self, spec: FusionSpec):
        super().__init__(spec)
        self.merge = nn.Linear(2 * spec.hidden_size, spec.hidden_size)

    def forward(self, visual: torch.Tensor, e3fp: torch.Tensor | None = None) -> torch.Tensor:
        queries, tokens, padding = self.queries_and_tokens(visual, e3fp)
        count = (~padding).sum(dim=1, keepdim=True).clamp(min=1)
        pooled = tokens.sum(dim=1, keepdim=True) / count[..., None]
        return self.merge(torch.cat([queries, pooled.expand_as(queries)], dim=-1))


class CrossAttentionProjector(_GeometryProjector):
    """`fusion`, the paper's Fusion Projector: cross-attention from the visual tokens to the E3FP
    tokens and a null key, then a feed-forward block, both pre-norm with residuals."""

    def __init__(self, spec: FusionSpec):
        super().__init__(spec)
        h = spec.hidden_size
        self.null_kv = nn.Parameter(torch.randn(1, 1, h) * 0.02)
        self.norm_q, self.norm_kv, self.norm_ffn = nn.LayerNorm(h), nn.LayerNorm(h), nn.LayerNorm(h)
        self.attn = nn.MultiheadAttention(h, spec.num_heads, dropout=spec.dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(h, spec.ffn_mult * h), nn.GELU(), nn.Dropout(spec.dropout),
                                 nn.Linear(spec.ffn_mult * h, h))

    def forward(self, visual: torch.Tensor, e3fp: torch.Tensor | None = None) -> torch.Tensor:
        queries, attended, _ = self._attend(visual, e3fp, weights=False)
        hidden = queries + attended
        return hidden + self.ffn(self.norm_ffn(hidden))

    def attention(self, visual: torch.Tensor, e3fp: torch.Tensor | None = None) -> torch.Tensor:
        """What each visual token attends to, averaged over heads: [B, tokens, 1 + atoms * levels],
        the null key first, then the E3FP tokens atom by atom (levels innermost); padding gets 0."""
        return self._attend(visual, e3fp, weights=True)[2]

    def _attend(self, visual: torch.Tensor, e3fp: torch.Tensor | None, *, weights: bool):
        queries, tokens, padding = self.queries_and_tokens(visual, e3fp)
        keys = self.norm_kv(torch.cat([self.null_kv.expand(len(tokens), -1, -1), tokens], dim=1))
        mask = torch.cat([torch.zeros_like(padding[:, :1]), padding], dim=1)
        attended, attention = self.attn(self.norm_q(queries), keys, keys, key_padding_mask=mask, need_weights=weights)
        return queries, attended, attention


class ZeroE3fpProjector(CrossAttentionProjector):
    """`fusion_zero_e3fp`: the Fusion Projector with every E3FP token replaced by padding (the
    paper's "without 3D" ablation: the same parameters, no geometry reaches them)."""

    zero_e3fp = True


PROJECTORS: dict[str, type[LinearProjector]] = {
    "fusion": CrossAttentionProjector,
    "fusion_zero_e3fp": ZeroE3fpProjector,
    "concat": ConcatProjector,
    "linear": LinearProjector,
}
VARIANTS = tuple(PROJECTORS)


def build_projector(spec: FusionSpec) -> LinearProjector:
    return PROJECTORS[spec.variant](spec)

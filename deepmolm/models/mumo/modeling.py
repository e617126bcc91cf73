"""MuMo: a SMILES stream through a hybrid Mamba + attention backbone, with a structural prior from the
unified graph injected into the stream's global token from a configurable layer onward.

Why late injection: the sequence layers first build their own reading of the SMILES; the structural
prior (atoms, BRICS and ring-system fragments, the whole molecule, all from a graph encoder that sees
only rotation-invariant geometry) then steers the global token in the upper layers, and the attention
layers above carry it to the other positions. Layers below `injection_layer` never see the graph.

Sequences are left padded and end with the global token, so the causal Mamba mixers read the whole
SMILES before it and it always sits at the last position.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import ModelOutput
from transformers.models.mamba.modeling_mamba import MambaMixer

from deepmolm.data.featurize.sfp import ATOM_FEATURES, BOND_FEATURES, FRAGMENT_SCALES, StructuredGraph
from deepmolm.models.mumo.configuration import MuMoConfig


@dataclass
class GraphBatch:
    """Structured graphs of a batch, flattened with offsets, and where each prior token goes.

    Prior tokens per molecule, in slot order: its atoms, its fragments at each scale of
    FRAGMENT_SCALES, then one token for the whole molecule."""

    atoms: torch.Tensor            # long [N, atom features]
    atom_graph: torch.Tensor       # long [N]
    bonds: torch.Tensor            # long [E, 2], global atom indices
    bond_features: torch.Tensor    # long [E, bond features]
    bond_lengths: torch.Tensor     # float [E]
    triplet_bonds: torch.Tensor    # long [T, 2], global bond indices
    angles: torch.Tensor           # float [T]
    fragment_ids: torch.Tensor     # long [scales, N]: global fragment index of each atom at each scale
    fragment_counts: torch.Tensor  # long [scales]
    token_slots: torch.Tensor      # long [N + sum F + B]: slot of each prior token, in the order above
    token_graph: torch.Tensor      # long [same]
    num_graphs: int
    max_tokens: int

    def to(self, device) -> GraphBatch:
        return GraphBatch(**{f.name: getattr(self, f.name).to(device) if torch.is_tensor(getattr(self, f.name))
                             else getattr(self, f.name) for f in fields(self)})


def collate_graphs(graphs: list[StructuredGraph]) -> GraphBatch:
    atom_offset = bond_offset = 0
    atoms, atom_graph, bonds, bond_features, lengths, triplets, angles = [], [], [], [], [], [], []
    fragment_ids = {scale: [] for scale in FRAGMENT_SCALES}
    fragment_offset = dict.fromkeys(FRAGMENT_SCALES, 0)
    slots = {kind: [] for kind in ("atoms", *FRAGMENT_SCALES, "molecule")}
    owners = {kind: [] for kind in slots}
    for index, graph in enumerate(graphs):
        n = len(graph.atoms)
        atoms.append(graph.atoms)
        atom_graph.append(np.full(n, index))
        bonds.append(graph.bonds + atom_offset)
        bond_features.append(graph.bond_features)
        lengths.append(graph.bond_lengths)
        triplets.append(graph.triplet_bonds + bond_offset)
        angles.append(graph.angles)
        slots["atoms"].append(np.arange(n))
        owners["atoms"].append(np.full(n, index))
        used = n
        for scale in FRAGMENT_SCALES:
            labels = graph.fragments[scale]
            count = int(labels.max()) + 1 if n else 0
            fragment_ids[scale].append(labels + fragment_offset[scale])
            fragment_offset[scale] += count
            slots[scale].append(used + np.arange(count))
            owners[scale].append(np.full(count, index))
            used += count
        slots["molecule"].append(np.array([used]))
        owners["molecule"].append(np.array([index]))
        atom_offset += n
        bond_offset += len(graph.bonds)

    def cat(parts, dtype, shape=(0,)):
        return torch.as_tensor(np.concatenate(parts) if parts else np.zeros(shape), dtype=dtype)

    counts = [fragment_offset[s] for s in FRAGMENT_SCALES]
    token_slots = torch.cat([cat(slots[kind], torch.long) for kind in slots])
    return GraphBatch(
        atoms=cat(atoms, torch.long, (0, len(ATOM_FEATURES))),
        atom_graph=cat(atom_graph, torch.long),
        bonds=cat(bonds, torch.long, (0, 2)),
        bond_features=cat(bond_features, torch.long, (0, len(BOND_FEATURES))),
        bond_lengths=cat(lengths, torch.float32),
        triplet_bonds=cat(triplets, torch.long, (0, 2)),
        angles=cat(angles, torch.float32),
        fragment_ids=torch.stack([cat(fragment_ids[s], torch.long) for s in FRAGMENT_SCALES]),
        fragment_counts=torch.tensor(counts, dtype=torch.long),
        token_slots=token_slots,
        token_graph=torch.cat([cat(owners[kind], torch.long) for kind in owners]),
        num_graphs=len(graphs),
        max_tokens=int(token_slots.max()) + 1 if len(token_slots) else 1,
    )


def _rbf(values: torch.Tensor, low: float, high: float, bins: int) -> torch.Tensor:
    centers = torch.linspace(low, high, bins, device=values.device, dtype=values.dtype)
    width = (high - low) / max(bins - 1, 1)
    return torch.exp(-((values[:, None] - centers) / width) ** 2)


def _mlp(width: int, ratio: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, ratio * width), nn.GELU(), nn.Dropout(dropout), nn.Linear(ratio * width, width))


def _scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    total = values.new_zeros(size, values.shape[-1]).index_add_(0, index, values)
    count = values.new_zeros(size).index_add_(0, index, values.new_ones(len(index)))
    return total / count.clamp(min=1)[:, None]


class GraphLayer(nn.Module):
    """Bonds first exchange messages over the angles between them (the line graph), then atoms
    gather from their bonds and neighbours."""

    def __init__(self, width: int, bins: int, dropout: float):
        super().__init__()
        self.angle = nn.Linear(bins, width)
        self.bond_norm, self.bond_mlp = nn.LayerNorm(width), _mlp(width, 2, dropout)
        self.atom_norm, self.atom_mlp = nn.LayerNorm(width), _mlp(width, 2, dropout)

    def forward(self, atoms, bonds, graph: GraphBatch, angle_rbf):
        first, second = graph.triplet_bonds[:, 0], graph.triplet_bonds[:, 1]
        weight = self.angle(angle_rbf)
        gathered = torch.zeros_like(bonds).index_add_(0, second, bonds[first] * weight).index_add_(0, first, bonds[second] * weight)
        bonds = bonds + self.bond_mlp(self.bond_norm(bonds + gathered))
        src, dst = graph.bonds[:, 0], graph.bonds[:, 1]
        messages = torch.zeros_like(atoms).index_add_(0, dst, F.gelu(atoms[src] + bonds)).index_add_(0, src, F.gelu(atoms[dst] + bonds))
        atoms = atoms + self.atom_mlp(self.atom_norm(atoms + messages))
        return atoms, bonds


class GraphEncoder(nn.Module):
    """The unified graph -> the structural prior: one token per atom, per fragment at each scale and
    for the molecule, projected to the stream's width and padded per molecule."""

    def __init__(self, config: MuMoConfig):
        super().__init__()
        width, bins = config.graph_hidden_size, config.rbf_bins
        self.bins = bins
        self.atom_embeddings = nn.ModuleList(nn.Embedding(size, width) for _, size in ATOM_FEATURES)
        self.bond_embeddings = nn.ModuleList(nn.Embedding(size, width) for _, size in BOND_FEATURES)
        self.length = nn.Linear(bins, width)
        self.layers = nn.ModuleList(GraphLayer(width, bins, config.dropout) for _ in range(config.graph_layers))
        self.scale_embeddings = nn.Embedding(len(FRAGMENT_SCALES) + 2, width)  # atoms, scales..., molecule
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, config.hidden_size))

    def forward(self, graph: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        atoms = sum(embed(graph.atoms[:, i]) for i, embed in enumerate(self.atom_embeddings))
        bonds = sum(embed(graph.bond_features[:, i]) for i, embed in enumerate(self.bond_embeddings))
        bonds = bonds + self.length(_rbf(graph.bond_lengths, 0.8, 3.0, self.bins))
        angle_rbf = _rbf(graph.angles, 0.0, math.pi, self.bins)
        for layer in self.layers:
            atoms, bonds = layer(atoms, bonds, graph, angle_rbf)
        tokens = [atoms + self.scale_embeddings.weight[0]]
        for row in range(len(FRAGMENT_SCALES)):
            count = int(graph.fragment_counts[row])
            tokens.append(_scatter_mean(atoms, graph.fragment_ids[row], count) + self.scale_embeddings.weight[row + 1])
        tokens.append(_scatter_mean(atoms, graph.atom_graph, graph.num_graphs) + self.scale_embeddings.weight[-1])
        flat = self.out(torch.cat(tokens))
        prior = flat.new_zeros(graph.num_graphs, graph.max_tokens, flat.shape[-1])
        prior[graph.token_graph, graph.token_slots] = flat
        mask = torch.zeros(graph.num_graphs, graph.max_tokens, dtype=torch.bool, device=flat.device)
        mask[graph.token_graph, graph.token_slots] = True
        return prior, mask


class InjectionEnhancedAttention(nn.Module):
    """The global token queries the structural prior; the answer is added to it (and only to it)."""

    def __init__(self, config: MuMoConfig):
        super().__init__()
        self.query_norm, self.prior_norm = nn.LayerNorm(config.hidden_size), nn.LayerNorm(config.hidden_size)
        self.attention = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads,
                                               dropout=config.dropout, batch_first=True)

    def forward(self, hidden: torch.Tensor, prior: torch.Tensor, prior_mask: torch.Tensor) -> torch.Tensor:
        query = self.query_norm(hidden[:, -1:])
        keys = self.prior_norm(prior)
        injected, _ = self.attention(query, keys, keys, key_padding_mask=~prior_mask, need_weights=False)
        return torch.cat([hidden[:, :-1], hidden[:, -1:] + injected], dim=1)


class SequenceLayer(nn.Module):
    """Pre-norm mixer (transformers' Mamba mixer, or bidirectional self-attention) and an MLP."""

    def __init__(self, config: MuMoConfig, index: int, kind: str):
        super().__init__()
        self.kind = kind
        self.mixer_norm, self.mlp_norm = nn.LayerNorm(config.hidden_size), nn.LayerNorm(config.hidden_size)
        if kind == "mamba":
            self.mixer = MambaMixer(config.mamba(), layer_idx=index)
        else:
            self.mixer = nn.MultiheadAttention(config.hidden_size, config.num_attention_heads,
                                               dropout=config.dropout, batch_first=True)
        self.mlp = _mlp(config.hidden_size, config.mlp_ratio, config.dropout)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = self.mixer_norm(hidden)
        if self.kind == "mamba":
            mixed = self.mixer(normed, attention_mask=mask.long())
        else:
            mixed, _ = self.mixer(normed, normed, normed, key_padding_mask=~mask, need_weights=False)
        hidden = hidden + self.dropout(mixed)
        return hidden + self.dropout(self.mlp(self.mlp_norm(hidden)))


@dataclass
class MuMoOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    global_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


class MuMoPreTrainedModel(PreTrainedModel):
    config_class = MuMoConfig
    base_model_prefix = "mumo"

    def _init_weights(self, module: nn.Module) -> None:
        """Every kind of parameter the model has: from_pretrained builds the model on the meta device
        and only this fills what the checkpoint lacks (a head, or the injection modules of layers a
        pretrained model did not inject at), so a kind left out here would stay uninitialised memory."""
        if isinstance(module, MambaMixer):  # its S4D start (built on meta, the mixer skips it)
            if module.A_log.device.type != "meta":
                module.init_mamba_weights()
            nn.init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
            if module.conv1d.bias is not None:
                nn.init.zeros_(module.conv1d.bias)
        elif isinstance(module, nn.MultiheadAttention):
            nn.init.xavier_uniform_(module.in_proj_weight)
            if module.in_proj_bias is not None:
                nn.init.zeros_(module.in_proj_bias)
        elif isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class MuMoModel(MuMoPreTrainedModel):
    def __init__(self, config: MuMoConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.graph_encoder = GraphEncoder(config)
        self.layers = nn.ModuleList(SequenceLayer(config, i, kind) for i, kind in enumerate(config.layer_kinds()))
        self.injections = nn.ModuleDict({str(n): InjectionEnhancedAttention(config) for n in config.injected_layers()})
        self.norm = nn.LayerNorm(config.hidden_size)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                graph: GraphBatch | None = None, output_hidden_states: bool = False, **kwargs) -> MuMoOutput:
        """graph None: the sequence stream alone (no injection anywhere)."""
        mask = (input_ids != self.config.pad_token_id) if attention_mask is None else attention_mask.bool()
        hidden = self.embeddings(input_ids) * mask[..., None]
        prior = self.graph_encoder(graph) if graph is not None else None
        states = []
        for number, layer in enumerate(self.layers, start=1):
            hidden = layer(hidden, mask)
            if prior is not None and str(number) in self.injections:
                hidden = self.injections[str(number)](hidden, *prior)
            if output_hidden_states:
                states.append(hidden)
        hidden = self.norm(hidden)
        return MuMoOutput(last_hidden_state=hidden, global_state=hidden[:, -1],
                          hidden_states=tuple(states) if output_hidden_states else None)


class MuMoForMaskedLM(MuMoPreTrainedModel):
    _tied_weights_keys = {"lm_head.weight": "mumo.embeddings.weight"}

    def __init__(self, config: MuMoConfig):
        super().__init__(config)
        self.mumo = MuMoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.mumo.embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, input_ids, attention_mask=None, graph: GraphBatch | None = None, labels=None, **kwargs) -> MuMoOutput:
        out = self.mumo(input_ids, attention_mask, graph, **kwargs)
        logits = self.lm_head(out.last_hidden_state)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return MuMoOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                          global_state=out.global_state, hidden_states=out.hidden_states)


class MuMoForPropertyPrediction(MuMoPreTrainedModel):
    """A head on the global token: targets (standardised) for regression, logits for classification;
    a NaN target is a missing label and does not count."""

    def __init__(self, config: MuMoConfig):
        super().__init__(config)
        self.mumo = MuMoModel(config)
        self.head = nn.Sequential(nn.Linear(config.hidden_size, config.hidden_size), nn.GELU(),
                                  nn.Dropout(config.dropout), nn.Linear(config.hidden_size, config.num_targets))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.mumo.embeddings

    def forward(self, input_ids, attention_mask=None, graph: GraphBatch | None = None, labels=None, **kwargs) -> MuMoOutput:
        out = self.mumo(input_ids, attention_mask, graph, **kwargs)
        logits = self.head(out.global_state)
        loss = None
        if labels is not None:
            labels = labels.view_as(logits).to(logits.dtype)
            known = ~torch.isnan(labels)
            if self.config.target_kind == "regression":
                loss = F.mse_loss(logits[known], labels[known])
            else:
                loss = F.binary_cross_entropy_with_logits(logits[known], labels[known])
        return MuMoOutput(loss=loss, logits=logits, last_hidden_state=out.last_hidden_state,
                          global_state=out.global_state, hidden_states=out.hidden_states)

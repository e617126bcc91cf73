"""MuMoConfig: the sizes of MuMo's sequence backbone and graph encoder, and where the structural
prior enters (transformers' configuration convention: what config.json holds)."""

from __future__ import annotations

from transformers import MambaConfig, PreTrainedConfig

TARGET_KINDS = ("regression", "classification")


class MuMoConfig(PreTrainedConfig):
    model_type = "mumo"

    def __init__(self, vocab_size: int = 64, hidden_size: int = 64, num_hidden_layers: int = 16,
                 attention_every: int = 4, num_attention_heads: int = 4, mlp_ratio: int = 4,
                 state_size: int = 16, conv_kernel: int = 4, expand: int = 2, injection_layer: int = 9,
                 graph_hidden_size: int = 64, graph_layers: int = 3, rbf_bins: int = 16, dropout: float = 0.0,
                 num_targets: int = 1, target_kind: str = "regression", pad_token_id: int = 0,
                 mask_token_id: int = 2, global_token_id: int = 3, use_mambapy: bool = True, **kwargs):
        self.vocab_size, self.hidden_size, self.num_hidden_layers = vocab_size, hidden_size, num_hidden_layers
        self.attention_every, self.num_attention_heads, self.mlp_ratio = attention_every, num_attention_heads, mlp_ratio
        self.state_size, self.conv_kernel, self.expand = state_size, conv_kernel, expand
        self.injection_layer = injection_layer
        self.graph_hidden_size, self.graph_layers, self.rbf_bins = graph_hidden_size, graph_layers, rbf_bins
        self.dropout, self.num_targets, self.target_kind = dropout, num_targets, target_kind
        self.mask_token_id, self.global_token_id = mask_token_id, global_token_id
        self.use_mambapy = use_mambapy  # mamba.py's parallel scan where the CUDA kernels are absent (CPU)
        kwargs.setdefault("tie_word_embeddings", True)  # the MLM head reads out through the input embeddings
        super().__init__(pad_token_id=pad_token_id, **kwargs)
        if not 1 <= injection_layer <= num_hidden_layers:
            raise ValueError(f"injection_layer {injection_layer} is not a layer of 1..{num_hidden_layers}")
        if target_kind not in TARGET_KINDS:
            raise ValueError(f"target_kind {target_kind!r} is not one of {TARGET_KINDS}")
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_attention_heads {num_attention_heads}")

    def layer_kinds(self) -> list[str]:
        """Layer n (1-based) is attention when n is a multiple of attention_every, Mamba otherwise."""
        every = self.attention_every
        return ["attention" if every and n % every == 0 else "mamba" for n in range(1, self.num_hidden_layers + 1)]

    def injected_layers(self) -> list[int]:
        return list(range(self.injection_layer, self.num_hidden_layers + 1))

    def mamba(self) -> MambaConfig:
        return MambaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, state_size=self.state_size,
                           num_hidden_layers=self.num_hidden_layers, expand=self.expand, conv_kernel=self.conv_kernel,
                           use_mambapy=self.use_mambapy)

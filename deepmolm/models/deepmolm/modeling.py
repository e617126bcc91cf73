"""DeepMoLM as a transformers model: DeepEncoder -> Fusion Projector -> a Qwen2-family causal LM.

The prompt holds one `<image>` placeholder token per visual token (the loader expands the single
`<image>` of the template to `encoder tokens` copies); their input embeddings are replaced by the
projected visual tokens, everything else is the LM's own embedding. Labels are the loader's (-100 on
prompt and image positions). `DeepMoLMConfig` (configuration.py) / `save_pretrained` /
`from_pretrained` follow transformers' conventions, so checkpoints are safetensors plus config.json.

With `config.number_head` (the `cpu` recipe; not in the paper), a property answer's number is not
spelled digit by digit: the LM writes one <num> token and a small regression head reads the value
from the hidden state that wrote it and the molecule's visual tokens, pooled. A 4-layer LM spells a
number badly from what it sees (on the held-out molecules, greedy digits missed the molecular weight
by 76 g/mol where a linear probe of the same visual tokens missed by 22), and a digit it is unsure of
comes out as the likeliest digit (often 0), not as a value between the candidates. The head is trained with an L1 loss on a signed
log scale (one scale for masses of 1,000 and logPs of -2; L1 so the answer is the median the MAE
rewards), each slot weighing as much as `number_loss_coef` of the LM's tokens. After
`split_number_head` (the refit's per_view), a molecule without E3FP tokens (no conformer, or withheld)
is answered by a second head of its own (`number_head_drawing`): what the pooled visual tokens hold
differs between the two views, and one head fitted to both serves each worse (docs/benchmarks.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    PreTrainedModel,
    Qwen2ForCausalLM,
)
from transformers.generation import GenerationMixin

from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.deep_encoder import DeepEncoder
from deepmolm.models.deepmolm.fusion import build_projector
from deepmolm.models.deepmolm.processing import IGNORE


class DeepMoLMForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = DeepMoLMConfig
    base_model_prefix = "deepmolm"
    supports_gradient_checkpointing = False

    def __init__(self, config: DeepMoLMConfig):
        super().__init__(config)
        self.encoder = DeepEncoder(config.encoder_spec())
        self.projector = build_projector(config.fusion_spec())
        self.language_model = Qwen2ForCausalLM(config.qwen2())
        if config.number_head:
            hidden = config.qwen2().hidden_size
            self.number_head = number_head(hidden)
            if config.number_head_per_view:
                self.number_head_drawing = number_head(hidden)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # the parts initialise themselves (transformers' SAM and Qwen2 do, torch does the rest)
        return

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def visual_tokens(self, pixel_values: torch.Tensor, e3fp: torch.Tensor | None) -> torch.Tensor:
        """[B, 3, S, S], [B, atoms, levels] -> [B, encoder tokens, LM hidden size]."""
        return self.projector(self.encoder(pixel_values), e3fp)

    def input_embeddings(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None,
                         e3fp: torch.Tensor | None, visual: torch.Tensor | None = None) -> torch.Tensor:
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is None:
            return embeds
        if visual is None:
            visual = self.visual_tokens(pixel_values, e3fp)
        placeholders = input_ids == self.config.image_token_id
        per_sample = placeholders.sum(dim=1)
        if not bool((per_sample == visual.shape[1]).all()):
            raise ValueError(f"each prompt needs {visual.shape[1]} <image> tokens, got {per_sample.tolist()}")
        return embeds.masked_scatter(placeholders[..., None], visual.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, e3fp: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, numbers: torch.Tensor | None = None, **kwargs):
        """`numbers` [B]: the value each example's <num> slot stands for (NaN: none). With labels and
        a number head, a slot's L1 error counts as `number_loss_coef` tokens' loss: the LM's mean
        token loss plus coef x the slots' summed error over the batch's label tokens, so the token
        weighting of training (data.token_weight) treats both alike."""
        visual = None if pixel_values is None else self.visual_tokens(pixel_values, e3fp)
        embeds = self.input_embeddings(input_ids, pixel_values, e3fp, visual)
        with_numbers = self.config.number_head and labels is not None and numbers is not None
        if with_numbers:
            kwargs["output_hidden_states"] = True
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        if with_numbers:
            writes, rows = self._slots(labels)
            pooled = self.pooled_visual(visual, len(input_ids))
            geometry = has_geometry(e3fp, len(input_ids), input_ids.device)
            if not len(rows):  # the head still joins the graph (zero gradient): DDP waits for every trained parameter
                out.loss = out.loss + 0.0 * self.number_logits(out.hidden_states[-1][:, 0], pooled, geometry).sum()
            else:
                if bool(numbers[rows].isnan().any()):
                    raise ValueError("a <num> slot in the labels has no value in `numbers`")
                predicted = self.number_logits(out.hidden_states[-1][:, :-1][writes], pooled[rows], geometry[rows])
                error = (predicted - signed_log(numbers[rows].to(predicted.dtype))).abs().sum()
                out.loss = out.loss + self.config.number_loss_coef * error / (labels[:, 1:] != IGNORE).sum()
        return out

    def _slots(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T - 1] the positions whose next label is <num> (they write it), and their example rows."""
        writes = labels[:, 1:] == self.config.number_token_id
        return writes, writes.nonzero()[:, 0]

    @torch.no_grad()
    def slot_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                    e3fp: torch.Tensor | None, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the number head reads at each <num> slot of `labels`, as in training ([N, 3 x hidden]),
        and each slot's example row [N]: for fitting the head alone on the frozen model (has_geometry
        of the rows says which head answers it)."""
        visual = self.visual_tokens(pixel_values, e3fp)
        embeds = self.input_embeddings(input_ids, pixel_values, e3fp, visual)
        hidden = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                     output_hidden_states=True).hidden_states[-1]
        writes, rows = self._slots(labels)
        return self.head_inputs(hidden[:, :-1][writes], self.pooled_visual(visual, len(input_ids))[rows]), rows

    def pooled_visual(self, visual: torch.Tensor | None, batch: int) -> torch.Tensor:
        """[B, tokens, hidden] projected visual tokens -> [B, 2 x hidden]: their mean and max (zeros
        without a drawing)."""
        if visual is None:
            hidden = self.config.qwen2().hidden_size
            return torch.zeros(batch, 2 * hidden, device=self.number_head[-1].weight.device)
        return torch.cat([visual.mean(dim=1), visual.amax(dim=1)], dim=-1)

    def split_number_head(self) -> None:
        """A second number head for the molecules without E3FP, a copy of the first (to be fitted on
        that view); config.number_head_per_view then routes each slot to its view's head."""
        if not self.config.number_head:
            raise ValueError("the model has no number head to split")
        if not self.config.number_head_per_view:
            self.number_head_drawing = copy.deepcopy(self.number_head)
            self.config.number_head_per_view = True

    def number_logits(self, hidden: torch.Tensor, pooled: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """[N, hidden] states that wrote a <num>, [N, 2 x hidden] their molecules' pooled visual
        tokens and [N] whether each molecule had E3FP tokens -> [N] values on the signed log scale.
        Per view, both heads read every slot (both stay in the graph, as DDP needs) and each slot
        keeps its own view's answer."""
        inputs = self.head_inputs(hidden, pooled)
        both = self.number_head(inputs).squeeze(-1)
        if not self.config.number_head_per_view:
            return both
        return torch.where(geometry.to(both.device), both, self.number_head_drawing(inputs).squeeze(-1))

    @staticmethod
    def head_inputs(hidden: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """[N, hidden] slot states and [N, 2 x hidden] pooled visual tokens -> the head's [N, 3 x hidden]."""
        return torch.cat([hidden, pooled.to(hidden.dtype)], dim=-1)

    def numbers_at(self, hidden: torch.Tensor, pooled: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        """number_logits with the signed log undone: the values the slots stand for."""
        return signed_exp(self.number_logits(hidden, pooled, geometry).float())

    @torch.no_grad()
    def generate_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
                      e3fp: torch.Tensor | None, visual: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """New token ids only (greedy by default; `num_beams` > 1 for beam search); `visual`: the
        batch's `visual_tokens`, when the caller has them already."""
        embeds = self.input_embeddings(input_ids, pixel_values, e3fp, visual)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=attention_mask, **generate_kwargs)


def number_head(hidden: int) -> nn.Sequential:
    """Reads the slot's hidden state (which property, in which words) and the molecule's visual tokens
    pooled (mean and max): what a linear probe reads the values from."""
    return nn.Sequential(nn.LayerNorm(3 * hidden), nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))


def number_heads(model: nn.Module) -> dict[str, nn.Module]:
    """The model's number heads by attribute name: none, the one, or the one per view."""
    return {name: getattr(model, name) for name in ("number_head", "number_head_drawing") if hasattr(model, name)}


def has_geometry(e3fp: torch.Tensor | None, batch: int, device: torch.device | None = None) -> torch.Tensor:
    """[B] whether each molecule has an E3FP token ([B, atoms, levels], -1 = none; None: no molecule has)."""
    if e3fp is None:
        return torch.zeros(batch, dtype=torch.bool, device=device)
    return (e3fp >= 0).flatten(1).any(dim=1)


def signed_log(values: torch.Tensor) -> torch.Tensor:
    return torch.sign(values) * torch.log1p(values.abs())


def signed_exp(values: torch.Tensor) -> torch.Tensor:
    return torch.sign(values) * torch.expm1(values.abs())


# transformers' Auto classes know the model type, so a checkpoint directory (config.json with
# model_type "deepmolm") loads with AutoConfig / AutoModelForCausalLM, and AutoTokenizer reading
# the same directory does not warn about an unknown model type.
AutoConfig.register(DeepMoLMConfig.model_type, DeepMoLMConfig, exist_ok=True)
AutoModelForCausalLM.register(DeepMoLMConfig, DeepMoLMForCausalLM, exist_ok=True)

"""The SMILES tokenizer of the sequence stream: one token per atom (bracket atoms whole, Cl and Br as
one), bond, branch and ring label, as a transformers fast tokenizer (save_pretrained / from_pretrained).

Every encoding ends with the global token and pads on the left, which is what MuMoModel expects."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

# Bracket atoms, two-letter organic atoms, one-letter atoms, bonds, branches and %nn ring labels.
SMILES_PATTERN = r"(\[[^\]]+\]|Br|Cl|Si|Se|se|@@|%\d{2}|[BCNOPSFIbcnops]|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|\d)"
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "[GLOBAL]")  # ids 0..3, as MuMoConfig's defaults


def smiles_pieces(smiles: str) -> list[str]:
    return [piece for piece, _ in pre_tokenizers.Split(Regex(SMILES_PATTERN), "isolated").pre_tokenize_str(smiles)]


def build_smiles_tokenizer(smiles: Iterable[str], min_count: int = 1) -> PreTrainedTokenizerFast:
    """A vocabulary of the pieces seen at least min_count times in `smiles`; anything else is [UNK]."""
    counts = Counter(piece for text in smiles for piece in smiles_pieces(text))
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for piece, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if count >= min_count and piece not in vocab:
            vocab[piece] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(SMILES_PATTERN), "isolated")
    core.post_processor = processors.TemplateProcessing(single="$A [GLOBAL]", special_tokens=[("[GLOBAL]", vocab["[GLOBAL]"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   additional_special_tokens=["[GLOBAL]"], padding_side="left", truncation_side="left",
                                   model_input_names=["input_ids", "attention_mask"])

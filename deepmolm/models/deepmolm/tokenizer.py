"""The tokenizer: a local Hugging Face tokenizer for a real LLM, or a byte-level BPE trained here.

With `model.tokenizer_dir` set, that directory is loaded (never downloaded) and the prompt
template's special tokens are added when missing. Without it, a byte-level BPE is trained with the
tokenizers library on the instruction texts (prompts and responses), with the special tokens of
deepmolm/models/deepmolm/processing.py, and saved as an artifact with save_pretrained.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from deepmolm.models.deepmolm.processing import END, IMAGE, NUMBER, PAD, SPECIAL_TOKENS


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE on `texts`; every byte is in the alphabet, so nothing is ever unknown.

    Digits are split one per token before the byte-level step (as LLaMA's and Qwen's tokenizers do),
    so a number is always spelled the same way and a small model can learn place value instead of
    memorising merges like "342" or ".40". `texts` are the plain prompts and responses: the template's
    special tokens are added whole, and no merge may learn pieces of their strings."""
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                  pre_tokenizers.ByteLevel(add_prefix_space=False)])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=END,
                                   additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD, END)])


def load_tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """A saved tokenizer (ours or a real LLM's), with the template's special tokens present."""
    import deepmolm.models.deepmolm.modeling  # noqa: F401  (registers model_type "deepmolm": a checkpoint directory holds a tokenizer too)

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no tokenizer directory at {directory}")
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    return tokenizer


def image_token_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(IMAGE)


def number_token_id(tokenizer) -> int:
    return tokenizer.convert_tokens_to_ids(NUMBER)


def build_tokenizer(instructions: Path, out: Path, params) -> dict:
    """The tokenizer artifact: `model.tokenizer_dir` as is (plus the template's tokens), or a BPE of
    `model.bpe_vocab_size` trained on the prompts and responses of the molecules training learns
    from (`train.splits` minus `train.holdout`; every row when splits is null), so held-out captions
    stay out of the vocabulary; saved to `out` with save_pretrained."""
    from deepmolm.data.instructions import held_out, iter_examples

    splits, holdout = params.train.splits, params.train.holdout
    if params.model.tokenizer_dir is not None:
        tokenizer, source = load_tokenizer(params.model.tokenizer_dir), str(params.model.tokenizer_dir)
    else:
        examples = 0

        def texts():  # a row group at a time: the trainer counts words, the set is never held
            nonlocal examples
            for batch in iter_examples(instructions, ["cid", "split", "prompt", "response"]):
                for r in batch.to_pylist():
                    if (splits is None or r["split"] in splits) and not held_out(r["cid"], holdout.fraction, holdout.seed):
                        examples += 1
                        yield r["prompt"]
                        yield r["response"]
        tokenizer = train_bpe(texts(), params.model.bpe_vocab_size)
        if not examples:
            raise ValueError(f"instruction set {instructions} has no examples of splits {splits} to train a tokenizer on")
        source = f"byte-level BPE trained on {examples} examples of {instructions}"
    Path(out).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return {"out": str(out), "vocab_size": len(tokenizer), "source": source, "image_token_id": image_token_id(tokenizer)}

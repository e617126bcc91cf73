"""Caption metrics as ChEBI-20 papers report them (the MolT5 protocol).

Both texts are split into WordPiece tokens by the configured tokenizer (the SciBERT uncased
vocabulary by default), keeping at most `max_tokens` tokens and no special tokens. On those tokens:
BLEU-2 and BLEU-4 are NLTK's corpus BLEU (one reference per caption, no smoothing), METEOR is
NLTK's meteor_score per caption (WordNet synonyms, Porter stems), averaged. ROUGE-1/2/L are
rouge-score F-measures on the raw strings (its own tokenizer, no stemming), averaged. All on a 0-1
scale, as in ../shared/data/molt5/published.json.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from deepmolm.evaluation.predictions import Prediction
from deepmolm.evaluation.wordnet import wordnet_reader

METRICS = ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor")


@dataclass(frozen=True)
class CaptionScores:
    bleu2: float
    bleu4: float
    rouge1: float
    rouge2: float
    rougeL: float  # noqa: N815 - the name the field's tables use
    meteor: float
    n: int

    def as_dict(self) -> dict:
        return asdict(self)


def load_metric_tokenizer(directory: Path):
    """A local Hugging Face tokenizer directory; one holding only a WordPiece `vocab.txt` (as the
    SciBERT release does) is read as an uncased BERT tokenizer. Never downloads."""
    from transformers import AutoTokenizer, BertTokenizer

    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no tokenizer directory at {directory}")
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    vocab = directory / "vocab.txt"
    if not vocab.is_file():
        raise FileNotFoundError(f"{directory} has neither tokenizer.json, tokenizer_config.json nor vocab.txt")
    entries = vocab.read_text(encoding="utf-8").splitlines()
    return BertTokenizer(vocab={token: i for i, token in enumerate(entries)}, do_lower_case=True)


def wordpieces(tokenizer, texts: list[str], max_tokens: int) -> list[list[str]]:
    special = set(tokenizer.all_special_tokens)
    return [[t for t in tokenizer.tokenize(text) if t not in special][:max_tokens] for text in texts]


def score_captions(pairs: list[Prediction], tokenizer, *, max_tokens: int, nltk_data: Path) -> CaptionScores:
    from nltk.translate.bleu_score import corpus_bleu
    from nltk.translate.meteor_score import meteor_score
    from rouge_score import rouge_scorer

    if not pairs:
        raise ValueError("no captions to score")
    wordnet = wordnet_reader(nltk_data)
    references = wordpieces(tokenizer, [p.reference for p in pairs], max_tokens)
    hypotheses = wordpieces(tokenizer, [p.prediction for p in pairs], max_tokens)
    with warnings.catch_warnings():
        # NLTK warns when no n-gram matches at some order; the protocol's score is then 0 (no smoothing)
        warnings.filterwarnings("ignore", message="\nThe hypothesis contains 0 counts", category=UserWarning)
        bleu2 = corpus_bleu([[r] for r in references], hypotheses, weights=(0.5, 0.5))
        bleu4 = corpus_bleu([[r] for r in references], hypotheses, weights=(0.25, 0.25, 0.25, 0.25))
    meteor = float(np.mean([meteor_score([r], h, wordnet=wordnet) for r, h in zip(references, hypotheses)]))
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    rouge = [scorer.score(p.prediction, p.reference) for p in pairs]
    return CaptionScores(
        bleu2=float(bleu2),
        bleu4=float(bleu4),
        rouge1=float(np.mean([r["rouge1"].fmeasure for r in rouge])),
        rouge2=float(np.mean([r["rouge2"].fmeasure for r in rouge])),
        rougeL=float(np.mean([r["rougeL"].fmeasure for r in rouge])),
        meteor=meteor,
        n=len(pairs),
    )

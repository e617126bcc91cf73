"""Degenerate captions: the loops a small or undertrained language model falls into.

A caption is degenerate when one word comes three times in a row ("is is is"), one 4-gram comes
three times anywhere in it, or a word is itself a loop, one hyphenated piece three times in a row
("1-hydroxy-1-1-1-..."), the form a character-level loop takes inside a chemical name. Of the 6,601
ChEBI-20 references 11 are (peptide sequences and nucleotide or sugar chains: "Phe-Phe-Phe",
"Glu, Glu, Glu"; tests/eval check the share stays that small),
so the share of degenerate captions is a direct read of how much of the model's output is a loop.
"""

from __future__ import annotations

from collections import Counter

_EDGE = ".,;:!?\"'"


def words(text: str) -> list[str]:
    """Whitespace words, lower-cased, without the punctuation at their ends ("1.1.1.21" and
    "(1->4)-N-acetyl..." stay one word each: chemical names are not loops)."""
    return [w for w in (w.strip(_EDGE) for w in text.lower().split()) if w]


def _triple(items: list[str]) -> bool:
    return any(items[i] == items[i + 1] == items[i + 2] for i in range(len(items) - 2))


def is_degenerate(text: str) -> bool:
    tokens = words(text)
    if _triple(tokens) or any(_triple(token.split("-")) for token in tokens):
        return True
    grams = Counter(tuple(tokens[i:i + 4]) for i in range(len(tokens) - 3))
    return any(count >= 3 for count in grams.values())


def degenerate_share(texts: list[str]) -> float | None:
    return round(sum(map(is_degenerate, texts)) / len(texts), 6) if texts else None

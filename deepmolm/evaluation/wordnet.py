"""WordNet 3.0 for NLTK's METEOR, offline, from Debian's packages.

wordnet-base and wordnet-sense-index install the database under /usr/share/wordnet, but NLTK's
reader also opens `lexnames` (the numbered list of lexicographer files), which Debian does not ship.
Its content is documented, table and all, in the lexnames(5WN) manual page that wordnet-base does
ship; the file is written from that page. The corpus directory NLTK reads holds a copy of the
database (about 30 MB) plus that file.
"""

from __future__ import annotations

import functools
import gzip
import os
import re
import shutil
import warnings
from pathlib import Path

DEBIAN_DATABASE = Path("/usr/share/wordnet")
DEBIAN_MANUAL = Path("/usr/share/man/man5/lexnames.5WN.gz")
# the syntactic category codes of lexnames(5WN), keyed by the file name's prefix
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
NEEDED = ("data.noun", "index.noun", "data.verb", "index.verb", "data.adj", "index.adj", "data.adv", "index.adv",
          "noun.exc", "verb.exc", "adj.exc", "adv.exc")
_ROW = re.compile(r"^(\d{2})\t(\w+\.\w+)\s*\t")


class WordNetMissing(RuntimeError):
    pass


def lexnames_from_manual(manual: str) -> str:
    """The `lexnames` file: "NN<TAB>name<TAB>category" for each row of the manual's table."""
    rows = [m.groups() for m in map(_ROW.match, manual.splitlines()) if m]
    numbers = [int(n) for n, _ in rows]
    if not rows or numbers != list(range(len(rows))):
        raise WordNetMissing("the lexnames manual page has no numbered table of lexicographer files")
    return "".join(f"{n}\t{name}\t{CATEGORY[name.split('.')[0]]}\n" for n, name in rows)


def prepare_wordnet(nltk_data: Path, database: Path = DEBIAN_DATABASE, manual: Path = DEBIAN_MANUAL) -> Path:
    """Make `<nltk_data>/corpora/wordnet` (idempotent); returns `nltk_data` for nltk.data.path."""
    missing = [name for name in NEEDED if not (database / name).is_file()]
    if missing or not manual.is_file():
        raise WordNetMissing(
            f"WordNet 3.0 is not installed ({', '.join(missing) or manual} missing): "
            "install Debian's wordnet-base and wordnet-sense-index (./dev setup does)")
    corpus = Path(nltk_data) / "corpora" / "wordnet"
    corpus.mkdir(parents=True, exist_ok=True)
    for source in database.iterdir():  # copies: NLTK refuses to follow links out of its corpus root
        copy = corpus / source.name
        if not copy.is_file() or copy.stat().st_size != source.stat().st_size:
            shutil.copyfile(source, copy)
    lexnames = corpus / "lexnames"
    text = lexnames_from_manual(gzip.decompress(manual.read_bytes()).decode("utf-8", "replace"))
    if not lexnames.is_file() or lexnames.read_text() != text:
        temporary = lexnames.with_name(f".lexnames-{os.getpid()}")
        temporary.write_text(text)
        os.replace(temporary, lexnames)
    return Path(nltk_data)


def use_wordnet(nltk_data: Path) -> None:
    """Point NLTK at the prepared corpus, first; NLTK never downloads anything here."""
    import nltk

    path = str(prepare_wordnet(nltk_data))
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)


def wordnet_reader(nltk_data: Path):
    """NLTK's WordNet reader of the prepared corpus, loaded once per process, for METEOR."""
    use_wordnet(nltk_data)  # NLTK opens corpus files only under a root on its path
    return _wordnet_30(str(Path(nltk_data) / "corpora" / "wordnet"))


@functools.cache
def _wordnet_30(corpus: str):
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class WordNet30(WordNetCorpusReader):
        def map_wn(self, version="wordnet"):
            # NLTK 3.9's reader compares the loaded version ("3.0") with a corpus name ("wordnet"),
            # never equal, so each load maps WordNet 3.0 onto itself from index.sense, read twice:
            # 1.7 of a load's 2.9 s. The map only serves OMW's other languages; METEOR reads English.
            return None

    with warnings.catch_warnings():  # that the multilingual functions are not available: no OMW here
        warnings.filterwarnings("ignore", message="The multilingual functions", category=UserWarning)
        return WordNet30(corpus, None)


if __name__ == "__main__":  # ./dev setup runs it: the corpus at eval.nltk_data of params.yaml (or DIR)
    import sys

    from deepmolm.config import DEFAULT_PARAMS, load_params

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else load_params(DEFAULT_PARAMS, []).eval.nltk_data
    print(prepare_wordnet(target))

"""Caption metrics: the published MolT5-Large row reproduced, WordNet really in METEOR, strict files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from deepmolm.evaluation.captions import METRICS, load_metric_tokenizer, score_captions, wordpieces
from deepmolm.evaluation.predictions import Prediction, PredictionFileError, read_predictions
from deepmolm.evaluation.wordnet import (
    DEBIAN_DATABASE,
    DEBIAN_MANUAL,
    WordNetMissing,
    lexnames_from_manual,
    prepare_wordnet,
    use_wordnet,
    wordnet_reader,
)
from tests.conftest import PARAMS, run_cli


@pytest.fixture(scope="module")
def scibert(shared):
    return load_metric_tokenizer(shared / "tokenizers" / "scibert_scivocab_uncased")


def test_molt5_large_scores_match_the_published_row_within_0_007(shared, scibert, tmp_path_factory):
    published = json.loads((shared / "molt5" / "published.json").read_text())["models"]["molt5-large"]
    pairs = read_predictions(shared / "molt5" / "molt5-large-smiles2caption.txt", "molt5")
    assert len(pairs) == 3300
    scores = score_captions(pairs, scibert, max_tokens=512, nltk_data=tmp_path_factory.mktemp("nltk")).as_dict()
    assert scores["n"] == 3300
    for metric in METRICS:
        assert abs(scores[metric] - published[metric]) <= 0.007, (metric, scores[metric], published[metric])


def test_scibert_wordpieces_are_uncased_and_without_special_tokens(scibert):
    [tokens] = wordpieces(scibert, ["The molecule is a Tetracarboxylic ACID."], 512)
    assert tokens[:3] == ["the", "molecule", "is"] and "[CLS]" not in tokens and "[SEP]" not in tokens
    assert any(t.startswith("##") for t in tokens), "WordPiece splits rare words"
    assert len(wordpieces(scibert, ["word " * 600], 512)[0]) == 512


def test_meteor_uses_wordnet_synonyms(tmp_path):
    from nltk.corpus import wordnet
    from nltk.translate.meteor_score import meteor_score

    use_wordnet(tmp_path / "nltk")
    root = Path(wordnet.root.path)  # a corpus prepared here (this test's, or an earlier test's)
    assert (root / "data.noun").stat().st_size == (DEBIAN_DATABASE / "data.noun").stat().st_size
    assert (root / "lexnames").read_text() == lexnames_from_manual(gzip.decompress(DEBIAN_MANUAL.read_bytes()).decode())
    # NLTK looks synonyms up after Porter-stemming the unmatched words (as when MolT5 was scored),
    # so the pairs are words that are their own stems
    reference = ["the", "car", "is", "red"]
    synonym = meteor_score([reference], ["the", "auto", "is", "red"])
    unrelated = meteor_score([reference], ["the", "banana", "is", "red"])
    assert synonym > 0.99 > unrelated, "auto is a WordNet synonym of car; banana is not"
    assert meteor_score([["a", "colorless", "gas"]], ["a", "colourless", "gas"]) > 0.95
    assert wordnet.synsets("car")[0].lexname() == "noun.artifact", "lexnames was read"
    # METEOR's reader (score_captions) scores as NLTK's own, without mapping WordNet 3.0 onto itself
    ours = wordnet_reader(tmp_path / "nltk")
    assert ours.get_version() == "3.0" and ours.map30 is None and wordnet.map30, "NLTK's reader built the map"
    for hypothesis in (["the", "auto", "is", "red"], ["the", "banana", "is", "red"], ["a", "red", "motorcar"]):
        assert meteor_score([reference], hypothesis, wordnet=ours) == meteor_score([reference], hypothesis)


def test_lexnames_are_written_from_the_manual_page(tmp_path):
    text = lexnames_from_manual(gzip.decompress(DEBIAN_MANUAL.read_bytes()).decode())
    lines = text.splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[18] == "18\tnoun.person\t1"
    assert lines[44] == "44\tadj.ppl\t3"
    prepare_wordnet(tmp_path / "nltk")
    assert (tmp_path / "nltk" / "corpora" / "wordnet" / "lexnames").read_text() == text
    with pytest.raises(WordNetMissing, match="wordnet-base"):
        prepare_wordnet(tmp_path / "other", database=tmp_path / "nowhere")


def test_prediction_files_are_read_strictly(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("SMILES\tground truth\toutput\nCCO\tethanol\n")
    with pytest.raises(PredictionFileError, match="line 2: 2 tab-separated fields"):
        read_predictions(bad, "molt5")
    lines = tmp_path / "p.jsonl"
    lines.write_text('{"reference": "a", "prediction": "b"}\n{"reference": "a"}\n')
    with pytest.raises(PredictionFileError, match="line 2: needs string fields"):
        read_predictions(lines)
    with pytest.raises(FileNotFoundError):
        read_predictions(tmp_path / "missing.txt")


def test_cli_scores_jsonl_with_the_configured_tokenizer(tmp_path):
    predictions = tmp_path / "p.jsonl"
    rows = [Prediction("1", "the molecule is an alcohol", "the molecule is an alcohol"),
            Prediction("2", "the molecule is a ketone", "the molecule is an acid")]
    predictions.write_text("".join(json.dumps(p.__dict__) + "\n" for p in rows))
    out = tmp_path / "scores.json"
    result = run_cli("eval", "captions", "--predictions", str(predictions), "--out", str(out), "--params", str(PARAMS),
                     "-S", f"eval.nltk_data={tmp_path / 'nltk'}", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(summary) == {*METRICS, "n"} and summary["n"] == 2
    assert 0 < summary["bleu2"] < 1 and summary["rouge1"] > summary["rouge2"]
    assert json.loads(out.read_text()) == summary
    missing = run_cli("eval", "captions", "--predictions", str(tmp_path / "none.jsonl"), "--json")
    assert missing.returncode == 1 and "none.jsonl" in missing.stderr

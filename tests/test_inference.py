"""`deepmolm predict` on a small randomly initialised checkpoint: the plumbing, not the quality."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from deepmolm.config import load_params
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.models.deepmolm.tokenizer import image_token_id, load_tokenizer
from tests.conftest import PARAMS, run_cli, tmp_overrides


@pytest.fixture(scope="module")
def checkpoint(small_versions, tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoint")
    overrides = [*small_versions[2], *tmp_overrides(root)]
    built = run_cli("data", "instructions", "--shards", str(small_versions[0]), "--params", str(PARAMS),
                    *[a for o in overrides for a in ("-S", o)], "--json", check=True)
    instructions = json.loads(built.stdout.strip().splitlines()[-1])["out"]
    made = run_cli("model", "tokenizer", "--instructions", instructions, "--out", str(root / "ckpt"),
                   "-S", "model.bpe_vocab_size=400", "-S", "train.splits=null", "--json", check=True)  # TSV rows have no split
    assert json.loads(made.stdout.strip().splitlines()[-1])["vocab_size"] == 400
    tokenizer = load_tokenizer(root / "ckpt")
    torch.manual_seed(0)
    config = model_config(load_params(PARAMS, []), "tiny", vocab_size=len(tokenizer),
                          image_token_id=image_token_id(tokenizer))
    DeepMoLMForCausalLM(config).save_pretrained(root / "ckpt")
    return root / "ckpt"


def test_predict_from_a_smiles_and_from_an_image_with_an_sdf(checkpoint, shared, tmp_path):
    settings = ["-S", "model.generation.max_new_tokens=6", "-S", "model.generation.min_new_tokens=0", "--json"]
    by_smiles = run_cli("predict", "--checkpoint", str(checkpoint), "--smiles", "CC(=O)Oc1ccccc1C(=O)O", *settings)
    assert by_smiles.returncode == 0, by_smiles.stderr
    first = json.loads(by_smiles.stdout.strip().splitlines()[-1])
    assert first["geometry"] is True and isinstance(first["answer"], str) and first["prompt"]
    again = run_cli("predict", "--checkpoint", str(checkpoint), "--smiles", "CC(=O)Oc1ccccc1C(=O)O", *settings)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == first, "greedy decoding is deterministic"
    Image.new("RGB", (300, 300), "white").save(tmp_path / "drawing.png")
    by_files = run_cli("predict", "--checkpoint", str(checkpoint), "--image", str(tmp_path / "drawing.png"),
                       "--sdf", str(shared / "pubchem" / "Conformer3D_COMPOUND_CID_1.sdf"),
                       "--prompt", "What is the molecular weight of this molecule?", *settings)
    assert by_files.returncode == 0, by_files.stderr
    assert json.loads(by_files.stdout.strip().splitlines()[-1])["geometry"] is True


def test_predict_refuses_bad_input_clearly(checkpoint, tmp_path):
    both = run_cli("predict", "--checkpoint", str(checkpoint), "--smiles", "CCO", "--image", "x.png", "--sdf", "x.sdf")
    assert both.returncode == 2 and "either --smiles or both" in both.stderr
    bad = run_cli("predict", "--checkpoint", str(checkpoint), "--smiles", "c1cccc1")
    assert bad.returncode == 1 and "kekulization_failed" in bad.stderr
    task = run_cli("predict", "--checkpoint", str(checkpoint), "--smiles", "CCO", "--task", "poem")
    assert task.returncode == 2 and "--task 'poem': one of caption, property_qa" in task.stderr
    missing = run_cli("predict", "--checkpoint", str(tmp_path), "--smiles", "CCO")
    assert missing.returncode == 1 and "not a DeepMoLM checkpoint" in missing.stderr

"""Fixtures of the training tests: a small instruction set and a BPE tokenizer trained on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepmolm.config import load_params
from deepmolm.instructions import build_instructions, read_instructions
from deepmolm.model.prompt import format_prompt, format_response
from deepmolm.model.tokenizer import load_tokenizer, train_bpe
from tests.conftest import PARAMS, tmp_overrides


@pytest.fixture(scope="session")
def instruction_set(small_versions, tmp_path_factory):
    root = tmp_path_factory.mktemp("instructions")
    params = load_params(PARAMS, [*small_versions[2], *tmp_overrides(root)])
    return Path(build_instructions(small_versions[0], root / "out", params.instructions)["out"])


@pytest.fixture(scope="session")
def tokenizer_dir(instruction_set, tmp_path_factory):
    rows = read_instructions(instruction_set).to_pylist()
    trained = train_bpe([format_prompt(r["prompt"]) + format_response(r["response"]) for r in rows], 400)
    directory = tmp_path_factory.mktemp("tokenizer")
    trained.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    return load_tokenizer(tokenizer_dir)

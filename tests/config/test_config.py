import os
import re
import shlex
from pathlib import Path

import pytest

from deepmolm.config import ConfigError, load_params, parse_override
from tests.conftest import PARAMS, REPO


def test_repo_params_load_and_resolve_paths_against_the_file():
    params = load_params(PARAMS)
    assert params.paths.raw_dir == (REPO / "data" / "raw").resolve()
    # lexically, not through symlinks: a linked ../shared stays ../shared (config/base.py)
    assert params.sources.chebi20.mirror == Path(os.path.normpath(REPO / "../shared/data/chebi20"))
    assert params.sources.pubchem.batch_size <= 100


def test_override_sets_a_typed_value():
    params = load_params(PARAMS, ["sources.pubchem.batch_size=25", "sources.chebi20.splits=[test]"])
    assert params.sources.pubchem.batch_size == 25
    assert params.sources.chebi20.splits == ["test"]


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("sources.pubchem.batch_sise=5", ["unknown key 'sources.pubchem.batch_sise'", "batch_size", "-S"]),
        ("sources.pubchem.batch_size=500", ["sources.pubchem.batch_size", "less than or equal to 100", "500"]),
        ("ingest.rows_per_part=many", ["ingest.rows_per_part", "valid integer"]),
        ("sources.chebi20.url=http://example.org/x.txt", ["sources.chebi20.url", "{split}"]),
        ("sources.chebi20.sha256.test=abc", ["sources.chebi20.sha256", "64 lowercase hex"]),
        ("sources.pubchem.on_batch_failure=ignore", ["sources.pubchem.on_batch_failure", "'fail' or 'reject'"]),
        ("bogus=1", ["unknown key 'bogus'", "expected one of: contracts, eval, featurize, ingest, instructions, model, mumo, numerics, paths, recipe, recipes, refresh, "
                     "report, serve, sources, train"]),
        ("contracts.max_reject_rate.wildcard_atom=1.5", ["contracts.max_reject_rate", "fraction in [0, 1]", "1.5"]),
        ("model.generation.min_new_tokens=300", ["model.generation", "min_new_tokens 300 is above max_new_tokens 256"]),
        ("model.generation.number_digits=mean", ["model.generation.number_digits", "'likeliest' or 'median'"]),
        ("serve.concurrency=0", ["serve.concurrency", "greater than or equal to 1"]),
        ("serve.max_upload_bytes=10", ["serve.max_upload_bytes", "greater than or equal to 1024"]),
    ],
)
def test_invalid_overrides_name_the_key_and_what_was_expected(override, fragments):
    with pytest.raises(ConfigError) as err:
        load_params(PARAMS, [override])
    for fragment in fragments:
        assert fragment in str(err.value)


def test_median_digits_need_one_answer_at_a_time():
    with pytest.raises(ConfigError, match="number_digits median .* needs num_beams 1"):
        load_params(PARAMS, ["model.generation.number_digits=median", "model.generation.num_beams=3"])
    median = load_params(PARAMS, ["model.generation.number_digits=median", "model.generation.num_beams=1"])
    assert median.model.generation.number_digits == "median"


def test_a_recipe_sets_its_keys_over_the_file_and_overrides_win_over_the_recipe():
    cpu = load_params(PARAMS)
    gpu = load_params(PARAMS, ["recipe=gpu_small"])
    assert cpu.recipe == "cpu" and cpu.train.init.sam is None and cpu.model.preset == "cpu"
    assert gpu.model.preset == "small" and gpu.train.strategy == "deepspeed" and gpu.train.precision == "bf16"
    assert gpu.train.init.deepencoder is not None and gpu.train.init.language is not None, "pretrained parts: paths only"
    assert gpu.train.init.sam is None, "DeepSeek-OCR's DeepEncoder, SAM and CLIP trained together, as DeepMoLM uses it"
    assert load_params(PARAMS, ["recipe=gpu_small", "train.stage2.learning_rate=0.5"]).train.stage2.learning_rate == 0.5
    drawing = load_params(PARAMS, ["recipe=cpu_drawing"])
    assert drawing.train.init.encoder == REPO / "models" / "encoder" and cpu.train.init.encoder is None
    assert (drawing.train.stage1.withhold_e3fp, drawing.train.stage2.withhold_e3fp, cpu.train.stage2.withhold_e3fp) == (0.5, 0.5, 0)
    with pytest.raises(ConfigError, match="recipe 'fast' is not one of recipes: cpu, cpu_drawing, gpu_small, gpu_paper"):
        load_params(PARAMS, ["recipe=fast"])
    with pytest.raises(ConfigError, match=r"recipes.cpu.train.stage2.epoch: unknown key"):
        load_params(PARAMS, ["recipes.cpu={train.stage2.epoch: 3}"])
    with pytest.raises(ConfigError, match="recipes.cpu.featurize.time_limit_s: a recipe sets keys of model, train, eval"):
        load_params(PARAMS, ["recipes.cpu={featurize.time_limit_s: 3}"])
    with pytest.raises(ConfigError, match="recipes.cpu.train: a recipe sets dotted keys"):
        load_params(PARAMS, ["recipes.cpu={train: {seed: 3}}"])


def test_errors_in_the_file_name_the_file(tmp_path: Path):
    text = PARAMS.read_text().replace("  rows_per_part: 10000", "  rows_per_prat: 3\n  rows_per_part: 10000")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_params(bad)
    assert f"{bad}: unknown key 'ingest.rows_per_prat'" in str(err.value)


def test_missing_key_and_missing_file_are_reported(tmp_path: Path):
    bad = tmp_path / "p.yaml"
    bad.write_text(PARAMS.read_text().replace("  max_smiles_chars: 5000", ""))
    with pytest.raises(ConfigError, match="missing key 'ingest.max_smiles_chars'"):
        load_params(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_params(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["novalue", "=3", "a..b=1"])
def test_malformed_override_syntax(text):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override(text)


def test_section_hash_changes_only_with_its_section():
    base = load_params(PARAMS)
    other = load_params(PARAMS, ["sources.pubchem.concurrency=1"])
    assert base.section_hash("sources.chebi20") == other.section_hash("sources.chebi20")
    assert base.section_hash("sources.pubchem") != other.section_hash("sources.pubchem")


def test_the_full_runs_overrides_in_dev_are_valid_params():
    """`./dev full` passes its FULL_RUN overrides to `dvc exp run` after an hour of featurizing: a key
    misspelt there must fail here, not at the evaluate stage. Both models' held-out molecules chose
    the same decoding (no 4-gram twice), so the full run changes the corpus and the epochs only."""
    dev = (REPO / "dev").read_text()
    block = re.search(r"^FULL_RUN=\((.*?)\)", dev, flags=re.S | re.M).group(1)
    words = shlex.split(block)
    overrides = [value for flag, value in zip(words[::2], words[1::2], strict=True) if flag == "-S"]
    assert len(overrides) == len(words) // 2
    full, demo = load_params(PARAMS, overrides), load_params(PARAMS)
    assert full.sources.chebi20.max_rows_per_split is None and demo.sources.chebi20.max_rows_per_split == 150
    assert full.model.generation == demo.model.generation and full.model.generation.no_repeat_ngram_size == 4
    assert (full.train.stage2.epochs, demo.train.stage2.epochs) == (4, 8)

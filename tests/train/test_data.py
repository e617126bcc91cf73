"""The instruction loader: tokens and labels, padding, images by reference, into the tiny model."""

from __future__ import annotations

import io
from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deepmolm.config import load_params
from deepmolm.instructions import read_instructions
from deepmolm.model.molm import DeepMoLMForCausalLM
from deepmolm.model.presets import model_config
from deepmolm.model.prompt import END, IMAGE, SPECIAL_TOKENS, format_response
from deepmolm.model.tokenizer import image_token_id
from deepmolm.train.data import IGNORE, IMAGE_MEAN, IMAGE_STD, InstructionDataset, collate, encode_example, model_inputs
from tests.conftest import PARAMS


def test_bpe_tokenizer_keeps_the_template_tokens_whole_and_round_trips(tokenizer):
    for token in SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    text = "The molecule is a (2R)-2-hydroxy acid; TPSA 40.5 \u00c5\u00b2."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token == END


def test_labels_cover_the_response_only_and_images_are_expanded(tokenizer):
    encoded = encode_example("Describe the input molecule.", "It is an acid.", tokenizer, image_tokens=4, max_length=64)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids.count(image_token_id(tokenizer)) == 4 and len(ids) == len(labels)
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert all(label == IGNORE for label in labels[:first]) and labels[first:] == ids[first:]
    assert tokenizer.decode(ids[first:]) == format_response("It is an acid.")
    assert tokenizer.decode(ids[:first]).count(IMAGE) == 4
    cut = encode_example("Describe the input molecule.", "word " * 200, tokenizer, image_tokens=4, max_length=40)
    assert len(cut["input_ids"]) == 40 and cut["input_ids"][:first] == ids[:first], "only the response is cut"
    with pytest.raises(ValueError, match="the prompt alone"):
        encode_example("Describe the input molecule.", "x", tokenizer, image_tokens=4, max_length=8)


def test_collate_pads_tokens_and_molecules():
    pixels = torch.zeros(3, 8, 8, dtype=torch.uint8)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "pixels": pixels, "e3fp": [[1, 2, 3, 4]] * 2},
                     {"input_ids": [5], "labels": [IGNORE], "pixels": pixels, "e3fp": None}], pad_id=0, e3fp_levels=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["e3fp"].shape == (2, 2, 4) and (batch["e3fp"][1] == -1).all()


def test_dataset_reads_the_referenced_drawing_and_the_batch_feeds_the_tiny_model(instruction_set, tokenizer, small_versions):
    dataset = InstructionDataset(instruction_set, tokenizer, image_size=64, image_tokens=4, max_length=128)
    assert len(dataset) == 50
    row = read_instructions(instruction_set).slice(7, 1).to_pylist()[0]
    png = pq.read_table(small_versions[0] / row["image_part"]).column("image_png")[row["image_row"]].as_py()
    expected = np.asarray(Image.open(io.BytesIO(png)).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC,
                                                                            reducing_gap=2.0)).transpose(2, 0, 1)
    assert torch.equal(dataset[7]["pixels"], torch.from_numpy(expected.copy()))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4,
                                         collate_fn=partial(collate, pad_id=tokenizer.pad_token_id, e3fp_levels=4))
    batch = model_inputs(next(iter(loader)))
    pixels = batch["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape == (4, 3, 64, 64)
    reference = (expected.transpose(1, 2, 0) / 255.0 - np.array(IMAGE_MEAN)) / np.array(IMAGE_STD)
    normalised = model_inputs({"pixels": dataset[7]["pixels"][None]})["pixel_values"][0].numpy().transpose(1, 2, 0)
    assert np.allclose(normalised, reference, atol=1e-5), "CLIP's mean and std"
    params = load_params(PARAMS, [])
    torch.manual_seed(0)
    model = DeepMoLMForCausalLM(model_config(params, "tiny", vocab_size=len(tokenizer),
                                             image_token_id=image_token_id(tokenizer)))
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.slow
def test_ray_data_pipeline_yields_padded_batches(instruction_set, tokenizer, small_versions, tmp_path):
    import ray

    from deepmolm.instructions import EXAMPLES
    from deepmolm.train.ray_data import RayCollate, encode_rows

    tokenizer.save_pretrained(tmp_path / "tok")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        dataset = ray.data.read_parquet(str(instruction_set / EXAMPLES)).map_batches(
            encode_rows, batch_size=8,
            fn_kwargs={"shards": str(small_versions[0]), "tokenizer_dir": str(tmp_path / "tok"),
                                   "image_size": 64, "image_tokens": 4, "max_length": 128})
        batches = list(dataset.iter_torch_batches(batch_size=16, collate_fn=RayCollate(tokenizer.pad_token_id, 4)))
    finally:
        ray.shutdown()
    assert sum(len(b["input_ids"]) for b in batches) == 50, "every example, once"
    for batch in batches:
        assert batch["pixels"].dtype == torch.uint8 and batch["pixels"].shape[1:] == (3, 64, 64)
        assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
        assert batch["e3fp"].shape[0] == len(batch["input_ids"]) and batch["e3fp"].shape[2] == 4
        assert ((batch["input_ids"] == image_token_id(tokenizer)).sum(dim=1) == 4).all()

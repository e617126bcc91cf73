"""The instruction loader: tokens and labels, padding, images by reference, the epoch order, into the
tiny model."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from deepmolm.config import load_params
from deepmolm.data.instructions import read_instructions
from deepmolm.models.deepmolm.deep_encoder import DeepEncoderSpec
from deepmolm.models.deepmolm.drawing_store import build_drawings
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.models.deepmolm.processing import (
    END,
    IGNORE,
    IMAGE,
    SPECIAL_TOKENS,
    e3fp_batch,
    encode_example,
    example_lengths,
    NUMBER,
    format_response,
    image_pixels,
    number_slot,
)
from deepmolm.models.deepmolm.tokenizer import image_token_id
from deepmolm.training.deepmolm.data import (
    ExampleRows,
    InstructionDataset,
    _row_group,
    collate,
    epoch_batches,
    label_tokens,
    model_inputs,
    token_weight,
    withheld,
)
from deepmolm.training.deepmolm.rows import stage_rows
from tests.conftest import PARAMS, tmp_overrides


def test_bpe_tokenizer_keeps_the_template_tokens_whole_and_round_trips(tokenizer):
    for token in SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    text = "The molecule is a (2R)-2-hydroxy acid; TPSA 40.5 \u00c5\u00b2."
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.pad_token_id is not None and tokenizer.eos_token == END


def test_bpe_learns_no_pieces_of_the_special_tokens_and_spells_numbers_digit_by_digit(tokenizer):
    pieces = [t for t in tokenizer.get_vocab() if t not in SPECIAL_TOKENS]
    assert not [t for t in pieces if "<|" in t or "|>" in t], "merges of the template's token strings"
    ids = tokenizer("The molecular weight is 342.40 g/mol.", add_special_tokens=False)["input_ids"]
    spelled = [tokenizer.decode([i]).strip() for i in ids]
    assert [s for s in spelled if any(c.isdigit() for c in s)] == ["3", "4", "2", "4", "0"]


def test_labels_cover_the_response_only_and_images_are_expanded(tokenizer):
    encoded = encode_example("Describe the input molecule.", "It is an acid.", tokenizer, image_tokens=4, max_length=64)
    ids, labels = encoded["input_ids"], encoded["labels"]
    assert ids.count(image_token_id(tokenizer)) == 4 and len(ids) == len(labels)
    first = next(i for i, label in enumerate(labels) if label != IGNORE)
    assert all(label == IGNORE for label in labels[:first]) and labels[first:] == ids[first:]
    assert tokenizer.decode(ids[first:]) == format_response("It is an acid.")
    assert tokenizer.decode(ids[:first]).count(IMAGE) == 4
    assert labels[-1] == tokenizer.eos_token_id, "the response ends in the end token"


def test_an_example_over_max_length_is_left_out_not_cut(tokenizer):
    prompt, long = "Describe the input molecule.", "word " * 200
    exact = len(encode_example(prompt, "It is an acid.", tokenizer, image_tokens=4, max_length=64)["input_ids"])
    lengths = example_lengths([prompt, prompt], ["It is an acid.", long], tokenizer, image_tokens=4)
    assert lengths[0][0] == exact and lengths[1][0] > 64, "the count is encode_example's, end token included"
    encoded = encode_example(prompt, "It is an acid.", tokenizer, image_tokens=4, max_length=64)
    assert lengths[0][1] == len(encoded["labels"]) - encoded["labels"].count(IGNORE), "the response's, end included"
    encode_example(prompt, "It is an acid.", tokenizer, image_tokens=4, max_length=exact)
    with pytest.raises(ValueError, match="over max_length"):
        encode_example(prompt, "It is an acid.", tokenizer, image_tokens=4, max_length=exact - 1)
    with pytest.raises(ValueError, match="over max_length"):
        encode_example(prompt, long, tokenizer, image_tokens=4, max_length=64)


def test_a_property_answer_becomes_a_number_slot_with_its_value(tokenizer):
    assert number_slot("It is approximately 356.46 g/mol.", 356.46) == f"It is approximately {NUMBER} g/mol."
    assert number_slot("-0.50", -0.5) == NUMBER
    with pytest.raises(ValueError, match="does not write its answer value"):
        number_slot("The complexity (Bertz) is 745.2.", 745.3)
    with pytest.raises(ValueError, match="does not write its answer value"):
        number_slot("It is large.", 1.0)
    prompt, answer = "What is the molecular weight of this molecule?", "It is approximately 356.46 g/mol."
    encoded = encode_example(prompt, answer, tokenizer, image_tokens=4, max_length=64, number=356.46)
    slot = tokenizer.convert_tokens_to_ids(NUMBER)
    assert encoded["number"] == 356.46 and encoded["labels"].count(slot) == 1 and encoded["input_ids"].count(slot) == 1
    spelled = encode_example(prompt, answer, tokenizer, image_tokens=4, max_length=64)
    assert spelled["number"] is None and slot not in spelled["input_ids"]
    assert example_lengths([prompt], [number_slot(answer, 356.46)], tokenizer, 4)[0][0] == len(encoded["input_ids"])


def test_each_epoch_is_one_seeded_shuffle_of_every_row_dealt_to_the_workers():
    rows, world, batch = 103, 2, 4
    epoch0 = [epoch_batches(rows, seed=7, epoch=0, rank=r, world=world, batch_size=batch) for r in range(world)]
    seen = [i for worker in epoch0 for b in worker for i in b]
    assert len(seen) == len(set(seen)) == world * (rows // world // batch) * batch, "no row twice, every worker alike"
    assert all(len(worker) == rows // world // batch for worker in epoch0)
    assert epoch0 == [epoch_batches(rows, seed=7, epoch=0, rank=r, world=world, batch_size=batch) for r in range(world)]
    epoch1 = epoch_batches(rows, seed=7, epoch=1, rank=0, world=world, batch_size=batch)
    assert epoch1 != epoch0[0] and epoch_batches(rows, seed=8, epoch=0, rank=0, world=world, batch_size=batch) != epoch0[0]
    # a molecule's five examples are neighbours in the table: the shuffle spreads them over the epoch
    first_batch_molecules = {i // 5 for i in epoch0[0][0]}
    assert len(first_batch_molecules) >= 3
    # the whole split, not a window: the first batches already reach far down the table
    assert max(i for b in epoch0[0][:2] for i in b) > 40


def test_batches_grouped_by_length_pad_less_and_stay_a_seeded_shuffle():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in np.where(rng.random(1000) < 0.2, rng.integers(80, 300, 1000), rng.integers(40, 60, 1000))]
    world, batch = 2, 8

    def batches(group_steps: int, epoch: int = 0) -> list[list[list[int]]]:
        return [epoch_batches(len(lengths), seed=3, epoch=epoch, rank=r, world=world, batch_size=batch,
                              lengths=lengths, group_steps=group_steps) for r in range(world)]

    def padded(workers: list[list[list[int]]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for worker in workers for b in worker)
    plain, grouped = batches(0), batches(10)
    assert sorted(i for w in grouped for b in w for i in b) == sorted(i for w in plain for b in w for i in b), \
        "grouping only reorders the epoch's rows"
    assert [len(w) for w in grouped] == [len(w) for w in plain] == [len(lengths) // world // batch] * world
    assert padded(grouped) < 0.7 * padded(plain), "short examples no longer pad to a caption's length"
    # the two workers of one step get batches of like length, so neither waits long on the other
    step_gap = [abs(max(lengths[i] for i in a) - max(lengths[i] for i in b)) for a, b in zip(*grouped)]
    assert np.median(step_gap) <= 10
    # the sorted steps are shuffled again: long batches fall all over the epoch, not at the start of each group
    long_steps = [s for s, b in enumerate(grouped[0]) if max(lengths[i] for i in b) >= 80]
    assert min(long_steps) < len(grouped[0]) / 4 and max(long_steps) > 3 * len(grouped[0]) / 4
    assert sum(1 for s in long_steps if s % 10 == 0) < len(long_steps) / 2
    assert batches(10) == grouped and batches(10, epoch=1) != grouped


def test_shrinking_a_drawing_keeps_its_lines():
    from PIL import ImageDraw

    drawing = Image.new("RGB", (1024, 1024), "white")
    ImageDraw.Draw(drawing).line([(100, 512), (900, 512)], fill="black", width=2)  # a 2-px bond
    buffer = io.BytesIO()
    drawing.save(buffer, format="PNG")
    small = image_pixels(buffer.getvalue(), 128)
    assert small.shape == (3, 128, 128) and small.dtype == torch.uint8
    darkest = small[:, 60:68, 20:110].float().mean(0).min(0).values  # per column, the darkest of the rows around it
    assert int(darkest.max()) < 100, "the bond is still a dark line at 1/8 the size"
    plain = np.asarray(drawing.resize((128, 128), Image.Resampling.BICUBIC, reducing_gap=2.0))
    assert plain[60:68, 20:110].mean(-1).min() > 150, "which a plain resize fades to light grey"
    assert int(small[:, 20].min()) == 255, "and the paper stays white"


def test_collate_pads_tokens_and_molecules():
    pixels = torch.zeros(3, 8, 8, dtype=torch.uint8)
    batch = collate([{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "pixels": pixels, "e3fp": [[1, 2, 3, 4]] * 2},
                     {"input_ids": [5], "labels": [IGNORE], "pixels": pixels, "e3fp": None}], pad_id=0, e3fp_levels=4)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["e3fp"].shape == (2, 2, 4) and (batch["e3fp"][1] == -1).all()


def test_one_e3fp_batch_for_training_evaluation_and_inference():
    # a shard's list of lists, an inference array, an empty conformer list and no conformer at all
    batch = e3fp_batch([[[1, 2], [3, 4], [5, 6]], np.array([[7, 8]], dtype=np.int32), [], None], levels=2)
    assert batch.dtype == torch.long and batch.shape == (4, 3, 2)
    assert batch[0].tolist() == [[1, 2], [3, 4], [5, 6]]
    assert batch[1].tolist() == [[7, 8], [-1, -1], [-1, -1]]
    assert (batch[2:] == -1).all()
    assert e3fp_batch([None, None], levels=4).shape == (2, 1, 4), "no geometry anywhere still gives one padded atom"
    with pytest.raises(RuntimeError):
        e3fp_batch([[[1, 2, 3]]], levels=2)  # a fingerprint of other radius levels than the model's


def test_dataset_reads_the_referenced_drawing_and_the_batch_feeds_the_tiny_model(instruction_set, tokenizer, small_versions,
                                                                                drawings64):
    dataset = InstructionDataset(instruction_set, tokenizer, drawings=drawings64, image_tokens=4, max_length=512)
    assert len(dataset) == 50
    row = read_instructions(instruction_set).slice(7, 1).to_pylist()[0]
    png = pq.read_table(small_versions[0] / row["image_part"]).column("image_png")[row["image_row"]].as_py()
    expected = image_pixels(png, 64).numpy()
    assert torch.equal(dataset[7]["pixels"], torch.from_numpy(expected.copy()))
    loader = torch.utils.data.DataLoader(dataset, batch_size=4,
                                         collate_fn=partial(collate, pad_id=tokenizer.pad_token_id, e3fp_levels=4))
    clip = DeepEncoderSpec()  # CLIP's statistics: the towers' own, and a random encoder's
    batch = model_inputs(next(iter(loader)), clip)
    pixels = batch["pixel_values"]
    assert pixels.dtype == torch.float32 and pixels.shape == (4, 3, 64, 64)
    reference = (expected.transpose(1, 2, 0) / 255.0 - np.array(clip.pixel_mean)) / np.array(clip.pixel_std)
    normalised = model_inputs({"pixels": dataset[7]["pixels"][None]}, clip)["pixel_values"][0].numpy().transpose(1, 2, 0)
    assert np.allclose(normalised, reference, atol=1e-5), "CLIP's mean and std"
    deepseek = DeepEncoderSpec(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5))
    normalised = model_inputs({"pixels": dataset[7]["pixels"][None]}, deepseek)["pixel_values"][0].numpy()
    assert np.allclose(normalised, expected / 127.5 - 1.0, atol=1e-5), "DeepSeek-OCR's: [-1, 1]"
    params = load_params(PARAMS, [])
    torch.manual_seed(0)
    model = DeepMoLMForCausalLM(model_config(params, "tiny", vocab_size=len(tokenizer),
                                             image_token_id=image_token_id(tokenizer)))
    assert torch.isfinite(model(**batch).loss)


def test_a_drawing_store_of_another_shard_version_is_refused(instruction_set, tokenizer, small_versions, tmp_path):
    other = build_drawings(small_versions[1], 64, tmp_path)
    with pytest.raises(ValueError, match="is of shard version"):
        InstructionDataset(instruction_set, tokenizer, drawings=other, image_tokens=4, max_length=512)


def test_token_weights_make_the_epoch_objective_independent_of_how_rows_are_batched(instruction_set, tokenizer, drawings64):
    """Grouping by length puts short property answers and long captions in separate batches; with each
    batch's mean loss weighted by its label tokens, an epoch's summed loss is the same as with mixed
    batches (a plain mean per batch would weigh a property-answer token several times a caption's)."""
    dataset = InstructionDataset(instruction_set, tokenizer, drawings=drawings64, image_tokens=4, max_length=512)
    params = load_params(PARAMS, [])
    torch.manual_seed(0)
    model = DeepMoLMForCausalLM(model_config(params, "tiny", vocab_size=len(tokenizer),
                                             image_token_id=image_token_id(tokenizer))).eval()
    pad = partial(collate, pad_id=tokenizer.pad_token_id, e3fp_levels=4)
    rows = list(range(16))
    responses = [len(dataset[i]["labels"]) - dataset[i]["labels"].count(IGNORE) for i in rows]
    assert max(responses) > 3 * min(responses), "the fixture mixes short and long responses"
    labels_per_batch = 4 * sum(responses) / len(rows)
    by_length = sorted(rows, key=lambda i: responses[i])

    def objective(order: list[int], weighted: bool) -> float:
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(order), 4):
                batch = model_inputs(pad([dataset[i] for i in order[start:start + 4]]), DeepEncoderSpec())
                loss = float(model(**batch).loss)
                total += loss * (token_weight(batch["labels"], labels_per_batch) if weighted else 1.0)
        return total
    assert objective(by_length, True) == pytest.approx(objective(rows, True), rel=1e-5)
    # what one token weighs: the same in every batch, where a plain mean gives a short batch's tokens more
    batches = [model_inputs(pad([dataset[i] for i in by_length[s:s + 4]]), DeepEncoderSpec())["labels"] for s in range(0, 16, 4)]
    per_token = [token_weight(labels, labels_per_batch) / label_tokens(labels) for labels in batches]
    assert max(per_token) == pytest.approx(min(per_token)) == pytest.approx(1 / labels_per_batch)
    plain = [1 / label_tokens(labels) for labels in batches]
    assert max(plain) > 2 * min(plain)
    assert sum(label_tokens(model_inputs(pad([dataset[i]]), DeepEncoderSpec())["labels"]) for i in rows) == sum(responses)


def test_example_rows_read_any_row_from_a_few_kept_row_groups(small_versions, tmp_path, monkeypatch):
    import pickle

    import deepmolm.data.instructions as instructions

    monkeypatch.setattr(instructions, "EXAMPLES_PER_GROUP", 6)
    params = load_params(PARAMS, [*small_versions[2], *tmp_overrides(tmp_path)])
    directory = Path(instructions.build_instructions(small_versions[0], tmp_path / "out", params.instructions)["out"])
    table = read_instructions(directory).select(ExampleRows.COLUMNS).to_pylist()
    examples = ExampleRows(directory / instructions.EXAMPLES)
    order = np.random.default_rng(0).permutation(len(table))
    _row_group.cache_clear()
    assert len(examples) == 50 and [examples.row(int(i)) for i in order] == [table[i] for i in order]
    assert _row_group.cache_info().currsize == 8, "9 row groups read, only the last 8 kept"
    copy = pickle.loads(pickle.dumps(examples))  # what a DataLoader worker gets
    assert copy.row(49) == table[49]
    with pytest.raises(IndexError, match="row 50 of"):
        examples.row(50)


def test_stage_rows_send_positions_and_token_counts_of_the_chosen_examples(instruction_set, tokenizer, drawings64,
                                                                          tmp_path):
    params = load_params(PARAMS, [*tmp_overrides(tmp_path), "train.splits=null", "train.holdout.fraction=0.3",
                                  "model.max_length=512"])
    chosen = stage_rows(params, 1, instruction_set, tokenizer, 4)
    rows = read_instructions(instruction_set).to_pylist()
    captions = [i for i, r in enumerate(rows) if r["task"] == "caption"]
    assert sorted([*chosen["train"].position, *chosen["holdout"].position]) == captions
    assert chosen["counts"]["rows"] == len(captions) and 0 < chosen["counts"]["holdout"] < len(captions)
    first = int(chosen["train"].position[0])
    expected = example_lengths([rows[first]["prompt"]], [rows[first]["response"]], tokenizer, 4)[0]
    assert (int(chosen["train"].tokens[0]), int(chosen["train"].response_tokens[0])) == expected
    dataset = InstructionDataset(instruction_set, tokenizer, drawings=drawings64, image_tokens=4, max_length=512,
                                 rows=chosen["train"])
    assert len(dataset) == len(chosen["train"]) and len(dataset[0]["input_ids"]) == expected[0]
    # stage 2's property answers: with a number head the counts are of the slotted answers
    answers = stage_rows(params, 2, instruction_set, tokenizer, 4)
    slotted = InstructionDataset(instruction_set, tokenizer, drawings=drawings64, image_tokens=4, max_length=512,
                                 rows=answers["train"], number_slots=True)
    numbered = [i for i in range(len(slotted)) if slotted[i]["number"] is not None]
    assert numbered and all(rows[int(answers["train"].position[i])]["answer_value"] == slotted[i]["number"]
                            for i in numbered)
    assert [len(slotted[i]["input_ids"]) for i in range(len(slotted))] == answers["train"].tokens.tolist()
    batch = collate([slotted[i] for i in numbered[:2]] + [dataset[0]], pad_id=tokenizer.pad_token_id, e3fp_levels=4)
    assert batch["numbers"][:2].tolist() == pytest.approx([slotted[i]["number"] for i in numbered[:2]])
    assert batch["numbers"][2].isnan()


def test_withholding_e3fp_drops_a_seeded_share_per_epoch_and_keeps_the_rest(instruction_set, tokenizer, drawings64):
    """Modality dropout: a share of the examples trains without geometry, drawn again each epoch, the
    same draw for the same (seed, epoch) so a resumed run withholds from the same examples."""
    draws = [[withheld(0.3, seed=0, epoch=epoch, position=p) for p in range(2000)] for epoch in (0, 1)]
    assert 0.25 < np.mean(draws[0]) < 0.35 and draws[0] != draws[1]
    assert draws[0] == [withheld(0.3, seed=0, epoch=0, position=p) for p in range(2000)]
    assert not any(withheld(0.0, seed=0, epoch=0, position=p) for p in range(200))

    plain = InstructionDataset(instruction_set, tokenizer, drawings=drawings64, image_tokens=4, max_length=512)
    dropped = InstructionDataset(instruction_set, tokenizer, drawings=drawings64, image_tokens=4, max_length=512,
                                 withhold_e3fp=0.5, seed=3)
    for epoch in (0, 1):
        dropped.epoch = epoch
        without = [i for i in range(len(dropped)) if dropped[i]["e3fp"] is None]
        assert without == [i for i in range(len(dropped)) if withheld(0.5, seed=3, epoch=epoch, position=i)]
        assert 10 < len(without) < 40, "about half of the 50 examples"
        kept = [i for i in range(len(dropped)) if i not in without]
        assert all(np.array_equal(dropped[i]["e3fp"], plain[i]["e3fp"]) for i in kept)
        assert all(dropped[i]["input_ids"] == plain[i]["input_ids"] for i in without), "only the geometry goes"
    batch = collate([dropped[i] for i in without[:2]] + [dropped[kept[0]]], pad_id=tokenizer.pad_token_id,
                    e3fp_levels=4)
    assert (batch["e3fp"][:2] == -1).all() and (batch["e3fp"][2] >= 0).any()

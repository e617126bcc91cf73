"""The evaluate stage and the pipeline report on a small instruction set whose molecules are split in
two (validation to learn from, test held out), with a randomly initialised tiny model."""

from __future__ import annotations

import json
import re

import pytest
import torch

from deepmolm.config import ConfigError, load_params
from deepmolm.data.instructions import instruction_shards, read_instructions
from deepmolm.evaluation.evaluate import evaluate
from deepmolm.evaluation.examples import examples_of_splits
from deepmolm.evaluation.model_answers import answer_examples
from deepmolm.evaluation.outputs import BASELINE_PREDICTIONS, MODEL_PREDICTIONS
from deepmolm.models.deepmolm.generation import left_padded, task_decoding
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.tokenizer import build_tokenizer
from deepmolm.reports.pipeline import write_pipeline_report
from deepmolm.runtime.run_log import read_runs
from deepmolm.training.driver import log_metrics
from deepmolm.training.deepmolm.stages import initial_model
from tests.conftest import PARAMS, run_cli, tmp_overrides


@pytest.fixture(scope="module")
def setting(split_set, small_versions, tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    params = load_params(PARAMS, [*small_versions[2], *tmp_overrides(root), "train.splits=[validation]",
                                  "model.preset=tiny", "train.holdout.fraction=0",
                                  "eval.splits=[test]", "model.generation.max_new_tokens=12", "model.generation.min_new_tokens=2",
                                  "eval.property_max_new_tokens=6", "report.gallery_size=3"])
    model = initial_model(params, 1, tokenizer, None)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return params, root / "model"


def test_examples_of_splits_are_the_eval_splits_capped_per_task(split_set):
    directory, held = split_set
    rows = examples_of_splits(directory, ["test"], ["caption", "property_qa"], None)
    assert {r["cid"] for r in rows} == held and {r["split"] for r in rows} == {"test"}
    capped = examples_of_splits(directory, ["test"], ["caption", "property_qa"], 2)
    assert [r["task"] for r in capped].count("caption") == 2 and [r["task"] for r in capped].count("property_qa") == 2
    assert examples_of_splits(directory, ["train"], ["caption"], None) == []


def test_left_padding_puts_every_prompt_against_the_answer():
    ids, mask = left_padded([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_answers_in_a_batch_equal_answers_one_at_a_time(split_set, setting):
    directory, _ = split_set
    params, model = setting
    rows = examples_of_splits(directory, ["test"], ["caption", "property_qa"], 3)
    kwargs = {"decoding": lambda task: {"max_new_tokens": {"caption": 10, "property_qa": 6}[task], "num_beams": 1}}
    batched = answer_examples(model, directory, rows, batch_size=6, **kwargs)
    alone = answer_examples(model, directory, rows, batch_size=1, **kwargs)
    assert [p.id for p in batched] == [r["example_id"] for r in rows], "in the rows' order"
    assert [p.prediction for p in batched] == [p.prediction for p in alone], "padding changes no answer"


def test_evaluate_scores_model_and_baseline_on_the_same_held_out_molecules(split_set, setting):
    directory, held = split_set
    params, model = setting
    metrics = evaluate(params, model, directory)
    out = params.paths.reports_dir / "eval"
    written = json.loads((out / "metrics.json").read_text())
    assert written == {key: value for key, value in metrics.items() if key != "seconds"}
    assert metrics["seconds"] > 0 and read_runs(params.paths.logs_dir, "evaluate")[-1]["seconds"] == metrics["seconds"]
    data = metrics["dataset"]
    assert data["eval_molecules"] == len(held) and data["eval_splits"] == ["test"] and data["train_splits"] == ["validation"]
    model_lines = [json.loads(line) for line in (out / MODEL_PREDICTIONS).read_text().splitlines()]
    baseline_lines = [json.loads(line) for line in (out / BASELINE_PREDICTIONS).read_text().splitlines()]
    assert len(model_lines) == sum(data["eval_examples"].values())
    assert {int(line["id"]) for line in baseline_lines} == held, "the baseline answers the molecules the model captioned"
    assert metrics["baseline"]["pool_molecules"] == 10 - len(held), "it retrieves from the validation half only"
    assert metrics["model"]["captions"]["n"] == metrics["baseline"]["captions"]["n"] == len(held)
    assert 0 <= metrics["model"]["captions"]["bleu4"] <= 1 and metrics["baseline"]["captions"]["meteor"] > 0
    assert sum(p["n"] for p in metrics["model"]["properties"].values()) == data["eval_examples"]["property_qa"]
    assert metrics["model"]["parameters"] > 0 and metrics["model"]["preset"] == "tiny"
    assert 0 <= metrics["model"]["captions"]["degenerate"] <= 1 and metrics["references"]["degenerate"] == 0
    means = metrics["mean_baseline"]["properties"]
    train_mw = [r["answer_value"] for r in read_instructions(directory).to_pylist()
                if r["split"] == "validation" and r["property"] == "mw"]
    test_mw = [r["answer_value"] for r in read_instructions(directory).to_pylist() if r["split"] == "test" and r["property"] == "mw"]
    assert means["mw"]["mean"] == pytest.approx(sum(train_mw) / len(train_mw), abs=1e-4), "the training molecules' mean"
    assert means["mw"]["mae"] == pytest.approx(sum(abs(v - means["mw"]["mean"]) for v in test_mw) / len(test_mw), abs=1e-3)
    assert set(means) == set(metrics["model"]["properties"])

    assert metrics["without_conformer"]["molecules"] == 0, "every molecule of the small set has a conformer"
    dependence = metrics["drawing_dependence"]  # 24 molecules asked: every held-out one here
    assert dependence["molecules"] == len(held) and dependence["examples"] == len(model_lines)
    assert dependence["with_both"] == {k: metrics["model"][k] for k in ("captions", "properties")}
    for view in ("blank_drawing", "no_geometry"):
        assert dependence[view]["captions"]["n"] == len(held)
        delta = dependence["deltas"][view]["captions"]["bleu2"]
        assert delta == pytest.approx(dependence[view]["captions"]["bleu2"] - metrics["model"]["captions"]["bleu2"], abs=1e-4)

    reports = params.paths.reports_dir
    log_metrics(reports / "train" / "stage2", [{"step": s, "loss": 5.0 - s / 10, "lr": 1e-4, "grad_norm": 1.0} for s in range(1, 11)],
                {"stage": 2, "steps": 10, "rows": 25, "number_head_refit": {
                    "steps": 30, "slots": 60, "held_out_slots": 6, "train_l1": [0.5, 0.25], "holdout_l1": [0.5, 0.375],
                    "number_head_drawing": {"slots": 40, "held_out_slots": 4, "train_l1": [0.75, 0.5],
                                            "holdout_l1": [1.0, 0.625]}}},
                epochs=[{"epoch": 0, "step": 10, "train_loss": 4.5, "holdout_loss": 4.75}])
    page = write_pipeline_report(params, directory)
    text = page.read_text()
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", text)
    assert sources and all((page.parent / s).is_file() for s in sources), "only files beside the page"
    gallery = text.split("id='gallery'")[1]
    assert len(re.findall(r"class='card'", gallery)) == min(3, len(held))
    assert f"<b>{len(held)}</b> molecules of <b>split(s) test</b>" in text
    assert "stage 2: 10 steps on 25 examples" in text and "not comparable with published" in text
    assert "training_loss.png" in text
    assert "<td>4.750</td>" in text, "the held-out loss per epoch"
    assert "What the encoder reads" in text and text.count("src='pipeline/inputs/") == min(6, len(held))
    assert "mean baseline MAE" in text
    refit = text.split("id='number-head-refit'>")[1].split("</p>")[0]
    assert "on 60 training slots" in refit and "on 6 held-out slots 0.500 &rarr; 0.375" in refit
    assert "The drawing's head (molecules without E3FP) on 40 training slots 0.750 &rarr; 0.500" in refit, refit
    table = text.split("id='drawing-dependence'")[1].split("</table>")[0]
    assert table.count("<tr>") == 4 and "a white picture instead of the drawing" in table and "no E3FP tokens" in table
    assert "id='without-conformer'" not in text, "no such molecule here"
    apart = {"molecules": 2, "captions": {**metrics["model"]["captions"], "bleu2": 0.125},
             "properties": {"mw": {"n": 2, "valid_ratio": 1.0, "mae": 812.5}}}
    (out / "metrics.json").write_text(json.dumps({**written, "without_conformer": apart}))
    text = write_pipeline_report(params, directory).read_text()
    assert "2 of the held-out molecules have no conformer" in text and "BLEU-2 0.125, property MAE mw 812.50" in text


def test_on_holdout_the_model_answers_the_held_out_training_molecules_and_never_the_test_split(split_set, setting):
    from deepmolm.data.instructions import held_out

    directory, held = split_set
    params, model = setting
    tuning = load_params(PARAMS, [*[f"{k}={v}" for k, v in (("paths.reports_dir", params.paths.reports_dir / "tune"),)],
                                  "train.splits=[validation]", "model.preset=tiny", "train.holdout.fraction=0.4",
                                  "train.holdout.seed=3", "eval.on_holdout=true", "model.generation.max_new_tokens=4", "model.generation.min_new_tokens=0",
                                  "eval.property_max_new_tokens=4"])
    metrics = evaluate(tuning, model, directory, out=tuning.paths.reports_dir)
    validation = {r["cid"] for r in read_instructions(directory).to_pylist() if r["split"] == "validation"}
    chosen = {c for c in validation if held_out(c, 0.4, 3)}
    assert chosen and chosen != validation, "the seed picks some of the five"
    answered = {int(json.loads(line)["id"].split("-")[0])
                for line in (tuning.paths.reports_dir / MODEL_PREDICTIONS).read_text().splitlines()}
    assert answered == chosen and not answered & held
    assert metrics["dataset"]["eval_splits"] == "train.holdout"
    assert metrics["baseline"]["pool_molecules"] == len(validation - chosen), "retrieval from the trained-on molecules"


def test_degenerate_captions_are_loops_and_the_mean_baseline_answers_the_training_mean(shared):
    from deepmolm.evaluation.degenerate import degenerate_share, is_degenerate
    from deepmolm.evaluation.predictions import Prediction
    from deepmolm.evaluation.properties import mean_baseline

    assert is_degenerate("The is is is is is")
    assert is_degenerate("It is an acid. It is an acid. It is an acid.")
    assert not is_degenerate("It has a role as an EC 1.1.1.21 (aldehyde reductase) inhibitor and a metabolite.")
    assert is_degenerate("The molecule is a 1-hydroxy-D-1-1-1-1-1,11111111."), "a loop inside a name"
    assert degenerate_share(["The is is is", "It is an acid.", "An acid.", "An acid, an acid, an acid, an acid."]) == 0.5
    for split in ("validation", "test"):
        references = [line.split("\t")[2] for line in (shared / "chebi20" / f"{split}.txt").read_text().splitlines()[1:]]
        assert degenerate_share(references) < 0.005, "references are (almost) never loops"
    answers = [Prediction(id=str(i), reference=f"The molecular weight is {v} g/mol.", prediction="", property="mw")
               for i, v in enumerate((100.0, 300.0))]
    assert mean_baseline({"mw": [150.0, 250.0]}, answers) == {"mw": {"mean": 200.0, "train_values": 2, "mae": 100.0}}


def test_eval_splits_must_be_held_out():
    with pytest.raises(ConfigError, match="eval.splits"):
        load_params(PARAMS, ["train.splits=[validation, test]"])


def test_the_tokenizer_learns_from_the_training_splits_only(split_set, tmp_path):
    directory, held = split_set
    params = load_params(PARAMS, ["train.splits=[validation]", "model.bpe_vocab_size=400", "train.holdout.fraction=0.4",
                                  "train.holdout.seed=3"])
    summary = build_tokenizer(directory, tmp_path / "tok", params)
    from deepmolm.data.instructions import held_out

    train_rows = sum(1 for r in read_instructions(directory).to_pylist()
                     if r["split"] == "validation" and not held_out(r["cid"], 0.4, 3))
    assert 0 < train_rows < 25 and f"trained on {train_rows} examples" in summary["source"], "nor the held-out molecules"
    with pytest.raises(ValueError, match="no examples of splits"):
        build_tokenizer(directory, tmp_path / "none", load_params(PARAMS, ["train.splits=[train]"]))


def test_cli_eval_run_names_a_missing_model(split_set, tmp_path):
    directory, _ = split_set
    result = run_cli("eval", "run", "--model", str(tmp_path / "nothing"), "--instructions", str(directory),
                     "-S", f"paths.reports_dir={tmp_path}", "--quiet", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout.splitlines()[-1])["error"].endswith("is not a DeepMoLM checkpoint (no config.json)")


def test_a_caption_gets_the_length_floor_and_a_property_answer_its_own_budget_and_digits(split_set, setting, monkeypatch):
    """model.generation.min_new_tokens is for captions: a floor on a one-number answer would pad it."""
    directory, _ = split_set
    _, model = setting
    params = load_params(PARAMS, ["model.generation.min_new_tokens=7", "model.generation.max_new_tokens=9",
                                  "eval.property_max_new_tokens=5", "model.generation.number_digits=median",
                                  "model.generation.num_beams=1"])
    calls = []
    real = DeepMoLMForCausalLM.generate_text

    def spy(self, *args, **kwargs):
        processors = [type(p).__name__ for p in kwargs["logits_processor"]]
        calls.append((kwargs["min_new_tokens"], kwargs["max_new_tokens"], processors))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(DeepMoLMForCausalLM, "generate_text", spy)
    rows = examples_of_splits(directory, ["test"], ["caption", "property_qa"], 2)
    answer_examples(model, directory, rows, batch_size=1, decoding=lambda task: task_decoding(params, task))
    assert calls == [(7, 9, []) if task == "caption" else (0, 5, ["MedianDigits"]) for task in sorted(r["task"] for r in rows)], \
        "a caption's floor is not a number's, nor a number's digits a caption's"
    with pytest.raises(ValueError, match="unknown task 'poem'"):
        task_decoding(params, "poem")


def test_robustness_answers_the_same_examples_under_every_perturbation_and_the_report_shows_it(split_set, setting, tmp_path):
    from deepmolm.evaluation.robustness import RESULTS, TABLE, robustness

    directory, held = split_set
    params, model = setting
    two = params.eval.robustness.model_copy(update={"max_molecules": 2})
    report = robustness(params.model_copy(update={"eval": params.eval.model_copy(update={"robustness": two})}), model,
                        directory, out=tmp_path)
    names = [p["name"] for p in report["perturbations"]]
    assert names == ["none", "coords_recomputed", "coords_noise_0.1", "coords_noise_0.5", "etkdg_no_mmff", "no_geometry",
                     "blank_drawing", "jpeg_q20", "blur_3px", "restyled"]
    assert report["molecules"] == 2 and report["examples"] == 2 * 5, "a caption and four property questions each"
    by_name = {p["name"]: p for p in report["perturbations"]}
    assert all(by_name[n]["captions"]["n"] == 2 for n in names) and all(
        sum(s["n"] for s in by_name[n]["properties"].values()) == 8 for n in names)
    assert by_name["none"]["e3fp_changed"] == by_name["jpeg_q20"]["e3fp_changed"] == 0.0, "a drawing leaves the geometry"
    assert by_name["coords_noise_0.5"]["e3fp_changed"] > by_name["coords_noise_0.1"]["e3fp_changed"]
    written = json.loads((tmp_path / RESULTS).read_text())
    assert written["perturbations"] == report["perturbations"] and written["drawings"]["cid"] in held
    assert sorted(written["drawings"]) == ["blank_drawing", "blur_3px", "cid", "jpeg_q20", "none", "restyled"]
    assert by_name["no_geometry"]["without_geometry"] == 2 and by_name["none"]["without_geometry"] == 0
    assert all((tmp_path / path).is_file() for name, path in written["drawings"].items() if name != "cid")
    table = (tmp_path / TABLE).read_text()
    assert all(f"| {name} |" in table for name in names)

    if not (params.paths.reports_dir / "eval" / "metrics.json").is_file():  # this test alone: the page needs an evaluation
        evaluate(params, model, directory)
    page = write_pipeline_report(params, directory, out=tmp_path / "page", robustness=tmp_path / RESULTS)
    text = page.read_text()
    assert "id='robustness'" in text and text.count("<tr><td>") >= len(names)
    sources = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", text)
    assert sum("robustness/" in s for s in sources) == 5 and all((page.parent / s).is_file() for s in sources)
    with pytest.raises(FileNotFoundError, match="deepmolm eval robustness"):
        write_pipeline_report(params, directory, out=tmp_path / "page", robustness=tmp_path / "missing.json")


def test_the_evaluate_stage_draws_where_the_fusion_projectors_attention_goes(split_set, setting, tmp_path):
    from PIL import Image

    from deepmolm.evaluation.grounding import atom_attention, write_grounding
    from deepmolm.evaluation.outputs import GROUNDING
    from deepmolm.evaluation.examples import examples_of_splits as examples
    from deepmolm.models.deepmolm.generation import load_checkpoint
    from deepmolm.models.deepmolm.processing import cached_pixels

    directory, _ = split_set
    params, model_dir = setting
    rows = examples(directory, ["test"], ["caption"], None)
    model, _ = load_checkpoint(model_dir)
    row = rows[0]
    e3fp = torch.as_tensor(row["e3fp"], dtype=torch.long)
    e3fp[-1, 1:] = -1  # an atom with only its first level: the missing levels get no attention
    pixels = cached_pixels(str(instruction_shards(directory) / row["image_part"]), row["image_row"],
                           model.config.encoder_spec().image_size)
    per_atom, null = atom_attention(model, pixels, e3fp)
    grid = int(model.config.encoder_spec().tokens ** 0.5)
    assert per_atom.shape == (grid, grid, len(row["e3fp"])) and null.shape == (grid, grid)
    assert abs((per_atom.sum(axis=-1) + null) - 1).max() < 1e-5, "each visual token's attention sums to one"
    assert (per_atom >= 0).all() and (null > 0).all()

    shown = write_grounding(params, model_dir, directory, rows, tmp_path)
    assert [m["cid"] for m in shown["molecules"]] == list(dict.fromkeys(r["cid"] for r in rows))[:3]
    assert all(len(m["atoms"]) == 3 and m["shares"] == sorted(m["shares"], reverse=True) for m in shown["molecules"])
    with Image.open(tmp_path / GROUNDING) as figure:
        assert figure.size[0] > 1000 and figure.size[1] > 600, "three molecules, five panels each"

    linear = params.model_copy(update={"model": params.model.model_copy(update={"fusion_variant": "linear"})})
    tokenizer = load_checkpoint(model_dir)[1]
    initial_model(linear, 1, tokenizer, None).save_pretrained(tmp_path / "linear")
    tokenizer.save_pretrained(tmp_path / "linear")
    empty = write_grounding(linear, tmp_path / "linear", directory, rows, tmp_path / "linear")
    assert empty["molecules"] == [] and "linear projector has no cross-attention" in empty["why_empty"]
    assert (tmp_path / "linear" / GROUNDING).is_file()


def test_the_report_page_shows_an_ablation_table_beside_the_papers_directions(split_set, setting, tmp_path):
    from deepmolm.config import AblationParams
    from deepmolm.evaluation.ablation import cells, summarize, write_summary

    directory, _ = split_set
    params, model = setting
    grid = cells(AblationParams(variants=["fusion", "linear"], without_stage1=["fusion"], seeds=[0, 1], out="x"))
    files = {cell.name: {"reports/eval/metrics.json": {
        "model": {"captions": {"bleu2": 0.2, "bleu4": 0.1, "rougeL": 0.3, "meteor": 0.25 + 0.01 * cell.stage1},
                  "properties": {"mw": {"mae": 50.0 + cell.seed}}}, "dataset": {"eval_molecules": 150}},
        "reports/train/stage1/metrics.json": {"steps": 45 * cell.stage1},
        "reports/train/stage2/metrics.json": {"steps": 352, "row_counts": {"train_molecules": 143}}} for cell in grid}
    path = write_summary(summarize(grid, files), tmp_path / "ablation")
    if not (params.paths.reports_dir / "eval" / "metrics.json").is_file():  # this test alone: the page needs an evaluation
        evaluate(params, model, directory)
    text = write_pipeline_report(params, directory, out=tmp_path / "page", ablation=path).read_text()
    table = text[text.index("id='ablation'"):text.index("id='ablation-directions'")]
    assert re.findall(r"<tr><td[^>]*>([^<]+)</td>", table) == ["fusion", "linear", "fusion without stage 1"]
    assert "50.500" not in table and "50.5<br><small>(50.0-51.0)</small>" in table
    assert "on 143 molecules" in text and "0 + 352, 45 + 352" in text
    directions = text[text.index("id='ablation-directions'"):]
    assert "METEOR falls by more than 10 points" in directions and "disagrees" in directions
    assert "not run" in directions  # concat and fusion_zero_e3fp are not in this grid
    with pytest.raises(FileNotFoundError, match="deepmolm eval ablation"):
        write_pipeline_report(params, directory, out=tmp_path / "page", ablation=tmp_path / "missing.json")


def test_drawing_dependence_takes_whole_molecules_by_seed_and_subtracts_with_from_without():
    from deepmolm.evaluation.drawing_dependence import chosen_rows, deltas

    rows = [{"cid": cid, "example_id": f"{cid}-{task}"} for cid in range(10) for task in range(5)]
    first, again, other = chosen_rows(rows, 4, 0), chosen_rows(rows, 4, 0), chosen_rows(rows, 4, 1)
    assert first == again and {r["cid"] for r in first} != {r["cid"] for r in other}
    assert len(first) == 4 * 5 and all(sum(r["cid"] == c for r in first) == 5 for c in {r["cid"] for r in first})
    assert chosen_rows(rows, None, 0) == rows == chosen_rows(rows, 50, 0)

    captions = {"bleu2": 0.30, "bleu4": 0.2, "rouge1": 0.5, "rouge2": 0.3, "rougeL": 0.4, "meteor": 0.4, "n": 3}
    with_both = {"captions": captions, "properties": {"mw": {"mae": 40.0, "valid_ratio": 1.0}}}
    without = {"captions": {**captions, "bleu2": 0.10}, "properties": {"mw": {"mae": 300.0, "valid_ratio": 0.5}}}
    assert deltas(with_both, without) == {"captions": {**{m: 0.0 for m in captions if m != "n"}, "bleu2": -0.2},
                                          "properties": {"mw": {"mae": 260.0, "valid_ratio": -0.5}}}


def test_molecules_without_a_conformer_are_scored_apart(setting):
    from deepmolm.evaluation.captions import load_metric_tokenizer
    from deepmolm.evaluation.evaluate import without_conformer
    from deepmolm.evaluation.predictions import Prediction

    params, _ = setting
    rows = [{"cid": 1, "example_id": "1-c", "task": "caption", "e3fp": [[1, 2, 3, 4]]},
            {"cid": 1, "example_id": "1-mw", "task": "property_qa", "e3fp": [[1, 2, 3, 4]]},
            {"cid": 2, "example_id": "2-c", "task": "caption", "e3fp": None},
            {"cid": 2, "example_id": "2-mw", "task": "property_qa", "e3fp": None}]
    tasks = {r["example_id"]: r["task"] for r in rows}
    answers = [Prediction("1-c", "The molecule is an acid.", "The molecule is an acid."),
               Prediction("1-mw", "Its molecular weight is 60.0 g/mol.", "It is 61.0 g/mol.", "mw"),
               Prediction("2-c", "The molecule is a large peptide.", "The molecule is an acid."),
               Prediction("2-mw", "Its molecular weight is 4000.0 g/mol.", "It is 400.0 g/mol.", "mw")]
    tokenizer = load_metric_tokenizer(params.eval.tokenizer)
    apart = without_conformer(params, rows, tasks, answers, tokenizer)
    assert apart["molecules"] == 1 and apart["captions"]["n"] == 1
    assert apart["properties"]["mw"]["n"] == 1 and apart["properties"]["mw"]["mae"] == 3600.0, "molecule 2 only"
    assert without_conformer(params, rows[:2], tasks, answers[:2], tokenizer) == {"molecules": 0, "captions": None,
                                                                                  "properties": {}}

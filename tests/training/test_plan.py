"""What a training run is decided from, without starting Ray: stages, names, DeepSpeed config, LoRA,
the Jobs API request and the cluster manifests in infra/."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from deepmolm.config import ConfigError, load_params
from deepmolm.data.instructions import read_instructions
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.runtime.run_log import portable_path
from deepmolm.training.deepmolm.launch import plan_stage, stage_paths
from deepmolm.training.deepmolm.stages import LEARNING_CODE, NOT_LEARNED, add_lora, initial_model, merge_lora, random_parts, run_name, set_trainable
from deepmolm.training.strategy import DEEPSPEED_BUCKET_ELEMENTS, bucketed, deepspeed_config
from deepmolm.training.submit import job_entrypoint, runtime_env
from tests.conftest import PARAMS

ROOT = PARAMS.parent


def test_deepspeed_config_follows_params():
    params = load_params(PARAMS, ["train.deepspeed.zero_stage=3", "train.deepspeed.offload_optimizer=true",
                                  "train.grad_accum_steps=4", "train.micro_batch_size=2", "train.scaling.workers=8"])
    config = deepspeed_config(params.train, bf16=True)
    assert config["train_batch_size"] == 2 * 4 * 8 and config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == params.train.max_grad_norm and config["bf16"] == {"enabled": True}
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert zero["offload_optimizer"]["device"] == "cpu"
    plain = deepspeed_config(load_params(PARAMS).train, bf16=False)["zero_optimization"]
    assert plain["stage"] == 2 and "offload_optimizer" not in plain and "stage3_gather_16bit_weights_on_model_save" not in plain


def test_zeros_buckets_hold_the_models_gradients_and_no_more():
    config = deepspeed_config(load_params(PARAMS, ["train.deepspeed.zero_stage=3"]).train, bf16=True)
    small = bucketed(config, 300_288)["zero_optimization"]
    assert small["reduce_bucket_size"] == small["allgather_bucket_size"] == 300_288
    assert small["stage"] == 3 and small["stage3_gather_16bit_weights_on_model_save"], "the rest as params made it"
    large = bucketed(config, 7_000_000_000)["zero_optimization"]
    assert large["reduce_bucket_size"] == large["allgather_bucket_size"] == DEEPSPEED_BUCKET_ELEMENTS
    assert "reduce_bucket_size" not in config["zero_optimization"], "the params' config is left as it was"
    chosen = {**config, "zero_optimization": {**config["zero_optimization"], "reduce_bucket_size": 1000}}
    assert bucketed(chosen, 300_288)["zero_optimization"]["reduce_bucket_size"] == 1000, "a size set in the config wins"


def test_run_name_changes_with_what_is_learned_only(instruction_set, tokenizer_dir, tmp_path):
    def name(stage: int, *overrides: str) -> str:
        return run_name(stage, load_params(PARAMS, list(overrides)), "set-1", tokenizer_dir, None)

    assert name(1) == name(1) and name(1).startswith("stage1-")
    assert name(1, "train.stage1.learning_rate=0.5") != name(1)
    assert name(1, "train.scaling.workers=4") != name(1), "the effective batch changes"
    assert name(1, "train.stage2.learning_rate=0.5") == name(1), "stage 2's params do not touch stage 1"
    assert name(1, "train.runs_dir=/elsewhere", "train.max_failures=9", "train.cluster.install_packages=true") == name(1)
    assert run_name(1, load_params(PARAMS), "set-2", tokenizer_dir, None) != name(1)
    init = tmp_path / "stage1"
    init.mkdir()
    (init / "provenance.json").write_text('{"run": "stage1-aaa"}')
    first = run_name(2, load_params(PARAMS), "set-1", tokenizer_dir, init)
    (init / "provenance.json").write_text('{"run": "stage1-bbb"}')
    assert run_name(2, load_params(PARAMS), "set-1", tokenizer_dir, init) != first, "a new stage 1 model, a new run"
    code = tmp_path / "code"
    code.mkdir()
    (code / "modeling.py").write_text("HEAD = 1\n")
    before = run_name(1, load_params(PARAMS), "set-1", tokenizer_dir, None, code=(code,))
    assert run_name(1, load_params(PARAMS), "set-1", tokenizer_dir, None, code=(code,)) == before
    (code / "modeling.py").write_text("HEAD = 2\n")
    assert run_name(1, load_params(PARAMS), "set-1", tokenizer_dir, None, code=(code,)) != before, \
        "a changed model resumes no finished run of the old one"
    optimizer = tmp_path / "strategy.py"  # a single file among the code: the optimizer and its schedule
    optimizer.write_text("LR_GROUPS = 1\n")
    before = run_name(1, load_params(PARAMS), "set-1", tokenizer_dir, None, code=(code, optimizer))
    optimizer.write_text("LR_GROUPS = 2\n")
    assert run_name(1, load_params(PARAMS), "set-1", tokenizer_dir, None, code=(code, optimizer)) != before, \
        "a changed optimizer resumes no finished run either"
    assert all(path.exists() for path in LEARNING_CODE) and any(path.is_file() for path in LEARNING_CODE)


def _tiny(params) -> DeepMoLMForCausalLM:
    torch.manual_seed(0)
    return DeepMoLMForCausalLM(model_config(params, "tiny", vocab_size=64, image_token_id=3))


def test_every_param_a_run_is_named_by_makes_dvc_retrain_its_stage():
    """DVC skips a training stage whose params did not change while its run name (Ray's resume key)
    would: a knob missing from dvc.yaml trains nothing new under `dvc exp run -S`."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = load_params(PARAMS)
    # reach a stage through an artifact it depends on: the tokenizer (models/tokenizer), stage 1's export
    through_artifacts = {"model.tokenizer_dir", "model.bpe_vocab_size", "train.encoder_pretrain"}  # models/encoder
    # stage 1 trains on captions only: no <num> slot reaches the head's loss or its optimizer groups
    not_in_stage1 = {"model.number_loss_coef", "train.number_head_refit"}
    named = {f"model.{key}" for key in params.model.model_dump(exclude={"generation"})} | \
        {f"train.{key}" for key in params.train.model_dump(exclude=set(NOT_LEARNED))}
    for stage, extra_exempt in ((1, not_in_stage1), (2, {"train.init"})):
        listed = set(stages[f"train_stage{stage}"]["params"])
        missing = named - through_artifacts - extra_exempt - listed - {f"train.stage{stage}"}
        assert not missing, f"train_stage{stage} lacks params {sorted(missing)}"
        assert f"train.stage{stage}" in listed


def test_stage_1_trains_the_projector_and_stage_2_with_lora_only_adapters_and_projector():
    params = load_params(PARAMS)
    model = _tiny(params)
    counts = set_trainable(model, params.train.stage1)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"projector"} and counts["trainable"] == sum(p.numel() for p in model.projector.parameters())

    lora = load_params(PARAMS, ["train.stage2.lora.enabled=true", "train.stage2.lora.r=2",
                                "train.stage2.lora.target_modules=[q_proj, v_proj]"])
    model = _tiny(lora)
    add_lora(model, lora.train.stage2.lora)
    set_trainable(model, lora.train.stage2)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith(("projector.", "number_head.")) or "lora_" in n for n in names)
    assert any("lora_" in n for n in names) and any(n.startswith("projector.") for n in names)
    assert any(n.startswith("number_head.") for n in names), "the number head is new: it trains beside the adapters"
    for name, parameter in model.named_parameters():  # move the adapters away from zero, then merge
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)
    ids = torch.randint(4, 64, (1, 12))
    model.eval()  # no LoRA dropout
    with torch.no_grad():
        before = model.language_model(input_ids=ids).logits
        merged = merge_lora(model)
        after = merged.language_model(input_ids=ids).logits
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(before, after, atol=1e-4), "the merged LLM computes what LLM + adapters did"


def test_parts_that_start_random_train_in_both_stages_and_pretrained_ones_follow_the_paper(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"")
    assert random_parts(load_params(PARAMS, ["recipe=cpu_drawing"]), 1) == {"language_model"}, "stage 0's encoder"
    random_start = load_params(PARAMS)
    assert random_parts(random_start, 1) == random_parts(random_start, 2) == {"encoder", "language_model"}
    model = _tiny(random_start)
    set_trainable(model, random_start.train.stage1, random_parts(random_start, 1))
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == \
        {"encoder", "projector", "language_model", "number_head"}, "the number head trains with the LM"
    apart = load_params(PARAMS, [f"train.init.sam={weights}", f"train.init.clip={weights}",
                                 f"train.init.language={weights}"])
    assert random_parts(apart, 1) == {"encoder.compressor"}, "between a separate SAM and CLIP nothing is pretrained"
    together = load_params(PARAMS, [f"train.init.deepencoder={weights}", f"train.init.language={weights}"])
    assert random_parts(together, 1) == set(), "DeepSeek-OCR's DeepEncoder stays frozen, as in the paper"
    model = _tiny(apart)
    counts = set_trainable(model, apart.train.stage1, random_parts(apart, 1))
    assert counts["blocks"] == {"encoder.clip": "frozen", "encoder.compressor": "trainable", "encoder.sam": "frozen",
                                "language_model": "frozen", "number_head": "frozen", "projector": "trainable"}
    assert random_parts(load_params(PARAMS, [f"train.init.sam={weights}"]), 1) == {"encoder.compressor", "encoder.clip",
                                                                                 "language_model"}
    assert random_parts(load_params(PARAMS, [f"train.init.language={weights}"]), 2) == {"encoder"}
    assert random_parts(load_params(PARAMS, ["train.train_random_parts=false"]), 1) == set()


def test_stage_2_starts_in_training_mode(tokenizer, tmp_path):
    params = load_params(PARAMS, ["model.preset=tiny"])
    torch.manual_seed(0)
    DeepMoLMForCausalLM(model_config(params, "tiny", vocab_size=len(tokenizer), image_token_id=3)).save_pretrained(
        tmp_path / "stage1")
    model = initial_model(params, 2, tokenizer, tmp_path / "stage1")
    assert model.training and all(module.training for module in model.modules()), "dropout must be on"


def test_max_length_must_fit_the_language_models_positions():
    preset = load_params(PARAMS).model.preset
    limit = load_params(PARAMS).model.presets[preset].language.max_position_embeddings
    with pytest.raises(ConfigError, match=rf"model.max_length \({limit + 1}\) is over model.presets.{preset}.language"
                                          r".max_position_embeddings"):
        load_params(PARAMS, [f"model.max_length={limit + 1}"])
    assert load_params(PARAMS, [f"model.max_length={limit}"]).model.max_length == limit


def test_lora_needs_stage_2_and_unknown_train_keys_are_named():
    with pytest.raises(ConfigError, match="LoRA is for stage 2"):
        load_params(PARAMS, ["train.stage1.lora={enabled: true, r: 2, alpha: 2, dropout: 0, target_modules: [q_proj]}"])
    with pytest.raises(ConfigError, match="train.scaling.gpus"):
        load_params(PARAMS, ["train.scaling.gpus=2"])
    with pytest.raises(ConfigError, match="train.strategy"):
        load_params(PARAMS, ["train.strategy=fsdp"])


def test_plan_counts_steps_per_worker_and_refuses_a_set_too_small(instruction_set, tokenizer_dir, tmp_path):
    params = load_params(PARAMS, ["train.splits=null", "train.micro_batch_size=2", "train.stage2.epochs=3",
                                  "train.holdout.fraction=0", "model.preset=tiny", f"train.models_dir={tmp_path}"])
    paths = stage_paths(params, 2, instruction_set, tokenizer_dir, tmp_path / "stage1", None)
    with pytest.raises(FileNotFoundError, match="stage 2 starts from stage 1's exported model"):
        plan_stage(params, 2, paths)  # refused on the driver, before any worker starts
    (tmp_path / "stage1").mkdir()
    (tmp_path / "stage1" / "config.json").write_text("{}")
    plan = plan_stage(params, 2, paths)
    assert plan["rows"] == 50 and plan["steps_per_epoch"] == 50 // 2 // 2 and plan["total_steps"] == 36
    assert plan["row_counts"] == {"rows": 50, "train": 50, "holdout": 0, "too_long": 0, "train_molecules": 10,
                                  "holdout_molecules": 0}
    held = plan_stage(load_params(PARAMS, ["train.splits=null", "train.micro_batch_size=2", "train.holdout.fraction=0.3",
                                           "model.preset=tiny", "model.max_length=160"]), 2, paths)
    counts = held["row_counts"]
    assert 0 < counts["holdout_molecules"] < 10 and counts["train_molecules"] + counts["holdout_molecules"] == 10
    assert counts["too_long"] > 0 and counts["train"] + counts["holdout"] + counts["too_long"] == 50
    cids = read_instructions(instruction_set).column("cid").to_pylist()
    assert not ({cids[i] for i in held["selected_rows"]["train"].position}
                & {cids[i] for i in held["selected_rows"]["holdout"].position})
    assert plan["deepspeed_config"] is None and plan["bf16"] is False
    small = load_params(PARAMS, ["train.splits=null", "train.micro_batch_size=8", "train.scaling.workers=2",
                                 "train.holdout.fraction=0"])
    with pytest.raises(ConfigError, match="10 training examples .* are not one step"):
        plan_stage(small, 1, stage_paths(small, 1, instruction_set, tokenizer_dir, None, None))
    with pytest.raises(ConfigError, match="not from --init"):
        stage_paths(small, 1, instruction_set, tokenizer_dir, tmp_path, None)


def test_the_shard_version_of_an_instruction_set_resolves_from_a_relative_path(instruction_set, tmp_path, monkeypatch):
    import json

    from deepmolm.data.instructions import instruction_shards
    from deepmolm.runtime.run_log import portable_path
    from deepmolm.store.versions import MANIFEST

    actual = instruction_shards(instruction_set)
    assert not Path(json.loads((instruction_set / MANIFEST).read_text())["shards"]).is_absolute()
    copy = tmp_path / "set"
    shutil.copytree(instruction_set, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    (copy / MANIFEST).write_text(json.dumps({**manifest, "shards": portable_path(actual, start=copy)}))
    monkeypatch.chdir(tmp_path)  # a Ray task's working directory is not the project's
    assert instruction_shards(copy) == actual and actual.is_absolute(), "relative to the set, from anywhere"
    (copy / MANIFEST).write_text(json.dumps({**manifest, "shards": "nowhere/v1"}))
    with pytest.raises(FileNotFoundError, match="nowhere/v1"):
        instruction_shards(copy)


def test_jobs_api_request_carries_the_command_the_project_and_optionally_the_lock():
    params = load_params(PARAMS)
    entry = job_entrypoint(2, "params.yaml", ["train.strategy=deepspeed", "model.preset=paper"])
    assert shlex.split(entry) == ["python", "-m", "deepmolm", "train", "run", "--stage", "2", "--params", "params.yaml",
                                  "-S", "train.strategy=deepspeed", "-S", "model.preset=paper"]
    env = runtime_env(ROOT, params.train.cluster)
    assert env["working_dir"] == str(ROOT) and {".venv", "data", "runs", "models"} <= set(env["excludes"])
    assert "pip" not in env and env["env_vars"] == {"DEEPMOLM_PROJECT_ROOT": str(ROOT)}, "where the job finds the data"
    with_packages = runtime_env(ROOT, load_params(PARAMS, ["train.cluster.install_packages=true"]).train.cluster)
    assert "torch==2.13.0" in with_packages["pip"]["packages"]


def test_submit_to_an_address_where_no_head_answers_says_so():
    from tests.conftest import run_cli

    refused = run_cli("train", "submit", "--address", "http://127.0.0.1:1", "--stage", "2")
    assert refused.returncode == 2 and "--address http://127.0.0.1:1: no Ray Jobs API answers there" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_job_reads_relative_paths_in_the_project_it_was_sent_from(tmp_path, monkeypatch):
    """In a Ray job, params.yaml is the working_dir copy's; relative paths resolve in the project that
    submitted it, and records are relative to that project. A node without it gets the params named."""
    copy = tmp_path / "_ray_pkg_0123"
    copy.mkdir()
    shutil.copy(PARAMS, copy / "params.yaml")
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DEEPMOLM_PROJECT_ROOT", str(ROOT))
    params = load_params("params.yaml")
    assert params.paths.instructions_dir == ROOT / "data" / "instructions" and params.train.runs_dir == str(ROOT / "runs")
    assert portable_path(ROOT / "models" / "stage2") == "models/stage2"
    monkeypatch.setenv("DEEPMOLM_PROJECT_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(ConfigError, match=r"is not on this node.*paths\.instructions_dir.*train\.models_dir") as raised:
        load_params("params.yaml", [f"paths.shards_dir={tmp_path}"])
    assert "paths.shards_dir" not in str(raised.value), "an absolute path leads where it says"


def test_infra_manifests_run_the_train_command():
    import typer

    from deepmolm.cli import app

    job = yaml.safe_load((ROOT / "infra" / "kuberay" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["rayClusterSpec"]["rayVersion"] == "2.60.0"
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:5] == ["python", "-m", "deepmolm", "train", "run"]
    run = typer.main.get_command(app).commands["train"].commands["run"]
    parsed = run.make_context("run", argv[5:])  # parses the options as the CLI would, runs nothing
    assert parsed.params["stage"] == 1
    overridden = load_params(PARAMS, parsed.params["set_"])  # every -S names a real key with a valid value
    assert overridden.train.scaling.use_gpu and overridden.train.strategy == "deepspeed"
    gpu = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "8"
    cluster = yaml.safe_load((ROOT / "infra" / "ray" / "cluster.yaml").read_text())
    assert cluster["head_node_type"] in cluster["available_node_types"]


def test_stage1_with_0_epochs_exports_the_random_start_without_ray(instruction_set, tokenizer_dir, tmp_path):
    """The paper's "without stage 1": stage 2 then starts from the preset's seeded random weights."""
    import json

    import ray

    from deepmolm.training.deepmolm.launch import run_stage
    from deepmolm.training.driver import read_metric

    overrides = ["train.splits=null", "train.micro_batch_size=2", "train.holdout.fraction=0", "model.preset=tiny",
                 "train.stage1.epochs=0", f"train.models_dir={tmp_path / 'models'}", f"paths.reports_dir={tmp_path / 'r'}",
                 f"paths.logs_dir={tmp_path / 'logs'}", f"train.runs_dir={tmp_path / 'runs'}"]
    params = load_params(PARAMS, overrides)
    summary = run_stage(params, 1, instructions=instruction_set, tokenizer=tokenizer_dir)
    assert not ray.is_initialized()
    assert summary["steps"] == 0 and summary["skipped"] and not summary["up_to_date"]
    out = tmp_path / "models" / "stage1"
    exported = DeepMoLMForCausalLM.from_pretrained(out)
    from deepmolm.models.deepmolm.tokenizer import load_tokenizer

    fresh = initial_model(params, 1, load_tokenizer(tokenizer_dir), None)
    assert all(torch.equal(a, b) for a, b in zip(exported.state_dict().values(), fresh.state_dict().values()))
    assert json.loads((out / "provenance.json").read_text())["steps"] == 0
    metrics = tmp_path / "r" / "train" / "stage1"
    assert json.loads((metrics / "metrics.json").read_text())["skipped"] is True
    assert (metrics / "plots" / "metrics").is_dir() and read_metric(metrics, "train/loss") == []
    assert run_stage(params, 1, instructions=instruction_set, tokenizer=tokenizer_dir)["up_to_date"]  # found, not redone
    trained = load_params(PARAMS, [o for o in overrides if "epochs" not in o])
    assert plan_stage(trained, 1, stage_paths(trained, 1, instruction_set, tokenizer_dir, None, None))["run"] != summary["run"]


@pytest.mark.learns
def test_a_pretrained_deepencoder_stays_byte_equal_through_both_stages_and_a_random_compressor_trains(tmp_path):
    """Optimizer steps of stage 1 then stage 2 with what each stage trains: DeepSeek-OCR's encoder
    (loaded from its layout) does not move by a bit, the projector does; with SAM and CLIP from
    their own files the compressor between them, which nothing pretrained, trains."""
    from deepmolm.models.deepmolm.weights import load_pretrained_part
    from tests.models.deepmolm.test_molm import examples, tiny
    from tests.models.deepmolm.test_weights import _deepseek_checkpoint

    def steps(model, params) -> dict[str, torch.Tensor]:
        before = {k: v.clone() for k, v in model.state_dict().items()}
        for stage in (1, 2):
            set_trainable(model, params.train.stage(stage), random_parts(params, stage))
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
            for _ in range(2):
                optimizer.zero_grad()
                model(**examples(4)).loss.backward()
                optimizer.step()
        return {k: not torch.equal(before[k], v) for k, v in model.state_dict().items()}

    weights = tmp_path / "deepseek-ocr"
    together = load_params(PARAMS, [f"train.init.deepencoder={weights}", f"train.init.language={weights}"])
    model = tiny()
    _deepseek_checkpoint(model, weights)
    load_pretrained_part(model, "deepencoder", weights)
    moved = steps(model, together)
    assert not any(changed for key, changed in moved.items() if key.startswith("encoder.")), "bytes equal"
    assert any(changed for key, changed in moved.items() if key.startswith("projector."))

    apart = load_params(PARAMS, [f"train.init.sam={weights}", f"train.init.clip={weights}",
                                 f"train.init.language={weights}"])
    moved = steps(tiny(), apart)
    assert all(moved[k] for k in ("encoder.compressor.down1.weight", "encoder.compressor.down2.weight"))
    assert not any(changed for key, changed in moved.items() if key.startswith(("encoder.sam.", "encoder.clip.")))

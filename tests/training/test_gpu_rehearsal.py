"""A dress rehearsal of `recipe=gpu_small` on CPU (issue 43): the GPU recipe's whole path, from
pretrained checkpoints in the layouts their publishers ship, at tiny widths.

The test writes what a GPU user puts under weights/: DeepSeek-OCR's checkpoint (its key names, the
fused CLIP qkv, the language model and projector beside the encoder, two shards and an index), a
Qwen2 language model saved by transformers in shards with its index, and a Qwen2-like tokenizer
without the prompt template's tokens. Then the commands the DVC stages run: `model check-weights`,
`model tokenizer`, stage 1 and stage 2 on two Ray Train workers with the recipe's DeepSpeed ZeRO-2
and bf16 (what CPUs allow: no GPU, no loader processes), and the evaluate stage. Only the model's
widths, the batch and the number of molecules are the test's."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import PARAMS
from tests.models.deepmolm.test_weights import shard_tensors
from tests.training.conftest import deepmolm_cli

TINY_PRESET = "tiny"


def _qwen2_like_tokenizer(instruction_set: Path, directory: Path) -> int:
    """A byte-level BPE with Qwen2's own special tokens and none of the prompt template's, so the
    template's tokens are added on top, into embedding rows the pretrained LM has spare."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from deepmolm.data.instructions import read_instructions

    rows = read_instructions(instruction_set).to_pylist()
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core.train_from_iterator([t for r in rows for t in (r["prompt"], r["response"])],
                             trainers.BpeTrainer(vocab_size=380, special_tokens=special, show_progress=False,
                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>",
                                        additional_special_tokens=special[1:])
    tokenizer.save_pretrained(str(directory))
    return len(tokenizer)


def _weights(root: Path, instruction_set: Path) -> dict[str, Path]:
    """The three things a GPU user puts under weights/, at the tiny preset's widths."""
    from transformers import Qwen2ForCausalLM

    from deepmolm.config import load_params
    from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
    from deepmolm.models.deepmolm.presets import model_config
    from tests.models.deepmolm.test_weights import _deepseek_checkpoint

    root.mkdir(parents=True)
    tokens = _qwen2_like_tokenizer(instruction_set, root / "qwen2-tokenizer")
    shapes = DeepMoLMForCausalLM(model_config(load_params(PARAMS, []), TINY_PRESET))
    _deepseek_checkpoint(shapes, root / "deepseek-ocr", torch.bfloat16)  # both publishers ship bf16
    torch.manual_seed(3)
    language = Qwen2ForCausalLM(shapes.config.qwen2()).to(torch.bfloat16)
    assert language.config.vocab_size > tokens + 8, "spare rows for the template's tokens, as Qwen2 has"
    language.save_pretrained(str(root / "qwen2"), max_shard_size="200KB")  # shards and their index
    return {"tokenizer": root / "qwen2-tokenizer", "deepencoder": root / "deepseek-ocr", "language": root / "qwen2"}


@pytest.mark.slow
def test_the_gpu_small_recipe_runs_on_cpu_from_checkpoints_in_their_published_layouts(
        split_set, tmp_path, ray_processes):
    instructions, held = split_set
    weights = _weights(tmp_path / "weights", instructions)
    assert len(list(weights["language"].glob("model-*.safetensors"))) > 1
    assert (weights["language"] / "model.safetensors.index.json").is_file()
    sets = ["recipe=gpu_small", f"model.preset={TINY_PRESET}", f"model.tokenizer_dir={weights['tokenizer']}",
            f"train.init.deepencoder={weights['deepencoder']}", f"train.init.language={weights['language']}",
            "train.scaling.workers=2", "train.scaling.use_gpu=false", "train.scaling.cpus_per_worker=1",
            "train.loader_workers=0",
            "train.micro_batch_size=1", "train.stage1.max_steps=6", "train.stage2.max_steps=6",
            "train.splits=[validation]", "eval.splits=[test]", "train.holdout.fraction=0",
            "model.generation.max_new_tokens=12", "model.generation.min_new_tokens=2", "eval.property_max_new_tokens=6",
            *(f"paths.{name}_dir={tmp_path / name}" for name in ("reports", "logs", "cache")),
            f"train.runs_dir={tmp_path / 'runs'}", f"train.models_dir={tmp_path / 'models'}"]
    args = [arg for override in sets for arg in ("-S", override)]
    env, seconds = ray_processes.env(), {}

    def deepmolm(*command: str) -> str:
        started = time.perf_counter()
        done = deepmolm_cli([*command, *args], env)
        seconds[" ".join(command[:4] if command[:2] == ("train", "run") else command[:2])] = round(time.perf_counter() - started, 1)
        assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-4000:]
        return done.stdout

    models = tmp_path / "models"
    checked = deepmolm("model", "check-weights", "--tokenizer", str(weights["tokenizer"]), "--json")
    report = json.loads(checked.strip().splitlines()[-1])
    print(checked)
    assert report["problems"] == [] and report["embedding_rows"] >= report["tokenizer_tokens"]
    assert report["parts"]["deepencoder"]["skipped"] == 8 and report["parts"]["language"]["mapped"] > 0
    deepmolm("model", "tokenizer", "--instructions", str(instructions), "--out", str(models / "tokenizer"), "--json")

    stage1 = json.loads(deepmolm("train", "run", "--stage", "1", "--instructions", str(instructions),
                                 "--tokenizer", str(models / "tokenizer"), "--out", str(models / "stage1"),
                                 "--json").strip().splitlines()[-1])
    stage2 = json.loads(deepmolm("train", "run", "--stage", "2", "--instructions", str(instructions),
                                 "--init", str(models / "stage1"), "--out", str(models / "stage2"),
                                 "--json").strip().splitlines()[-1])
    for summary in (stage1, stage2):
        assert summary["strategy"] == "deepspeed" and summary["precision"] == "bf16" and summary["workers"] == 2
        assert summary["steps"] == 6 and torch.isfinite(torch.tensor(summary["last_loss"]))
    print(json.dumps({"seconds": seconds, "stage1_loss": [stage1["first_loss"], stage1["last_loss"]],
                      "stage2_loss": [stage2["first_loss"], stage2["last_loss"]]}))

    from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
    from tests.models.deepmolm.test_weights import _deepseek_name

    source = shard_tensors(weights["deepencoder"])
    trained = {stage: DeepMoLMForCausalLM.from_pretrained(models / stage, local_files_only=True) for stage in ("stage1", "stage2")}
    for stage, model in trained.items():  # the DeepEncoder is frozen in both stages: bit for bit what was shipped
        compared = 0
        for key, tensor in model.state_dict().items():
            projection = next((i for i, p in enumerate(("q_proj", "k_proj", "v_proj")) if f".self_attn.{p}." in key), None)
            name = _deepseek_name(key.replace("k_proj", "q_proj").replace("v_proj", "q_proj")) if key.startswith("encoder.") else None
            if name:  # CLIP's q, k and v are the thirds of the shipped fused qkv_proj
                shipped = source[name] if projection is None else source[name].chunk(3)[projection]
                assert torch.equal(tensor, shipped), f"{stage}: {key} moved"
                compared += 1
        assert compared == sum(1 for key in model.state_dict() if key.startswith("encoder."))
        assert model.config.encoder_spec().pixel_mean == (0.5, 0.5, 0.5), "DeepSeek-OCR's normalisation travels"
    lm = shard_tensors(weights["language"])
    layer = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(trained["stage1"].language_model.state_dict()[layer], lm[layer]), "stage 1 keeps the LLM frozen"
    assert not torch.equal(trained["stage2"].language_model.state_dict()[layer], lm[layer]), "stage 2 tunes it"
    assert not torch.equal(trained["stage1"].projector.state_dict()["visual_in.weight"],
                           trained["stage2"].projector.state_dict()["visual_in.weight"])

    deepmolm("eval", "run", "--model", str(models / "stage2"), "--instructions", str(instructions), "--json")
    metrics = json.loads((tmp_path / "reports" / "eval" / "metrics.json").read_text())
    assert metrics["dataset"]["eval_molecules"] == len(held) and metrics["model"]["captions"]["n"] == len(held)
    assert metrics["model"]["preset"] == TINY_PRESET

    from deepmolm.config import load_params
    from deepmolm.inference import Predictor, molecule_from_smiles

    params = load_params(PARAMS, sets)
    text = Predictor(models / "stage2").answer(molecule_from_smiles("CC(=O)O", params), "Describe the input molecule.", params)
    assert isinstance(text, str), "`deepmolm predict` and `serve` load the bf16 export and answer"
    print(json.dumps({"seconds": seconds}))

"""Training throughput of one device: samples/s, tokens/s, achieved TFLOP/s and MFU, for stage 1 or 2.

One training step is what a Ray Train worker runs (AdamW, bf16 autocast on GPUs, the stage's
trainable parts), on synthetic batches of the preset's shapes: a drawing, E3FP identifiers and a
prompt of 256 image tokens plus `--text-tokens` text tokens. FLOPs are counted by
torch.utils.flop_counter on one step (forward and backward as executed: a frozen part costs its
forward, and its backward only where gradients flow through it), so MFU = counted FLOPs / step
time / peak. The peak is `--peak-tflops` (989: H200 dense bf16 by specification; about 790 measured).

The loader check times the per-sample work of the real loader (PNG decode and resize to the
preset's size, tokenization) on one core and prints how many loader cores the measured training
rate needs.

    python -m benchmarks.train_throughput --preset small --stage 2 --batch 8
    python -m benchmarks.train_throughput --preset paper --language 1.5b --stage 2 --batch 8
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from deepmolm.config import load_params
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.training.deepmolm.stages import set_trainable
from deepmolm.training.strategy import param_groups

# Qwen2 / Qwen2.5 decoder sizes (published configs), to put under the paper's DeepEncoder
LANGUAGE = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, tie_word_embeddings=False),
}
SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "C1=CC=C(C=C1)C=O", "OC[C@H]1OC(O)[C@H](O)[C@@H](O)[C@@H]1O",
          "CCN(CC)CCOC(=O)c1ccc(N)cc1", "CC(C)Cc1ccc(cc1)[C@@H](C)C(=O)O", "c1ccc2c(c1)ccc1ccccc12", "NCCc1c[nH]c2ccc(O)cc12"]


def build(params, preset: str, language: str | None, stage: int, device: torch.device, vocab: int):
    config = model_config(params, preset, vocab_size=vocab, image_token_id=3)
    if language:
        config.language.update(LANGUAGE[language], vocab_size=vocab)
    model = DeepMoLMForCausalLM(config).to(device)
    counts = set_trainable(model, params.train.stage(stage))
    return model, counts


def batch(model, size: int, text_tokens: int, device: torch.device) -> dict:
    spec = model.config.encoder_spec()
    levels = model.config.fusion_spec().e3fp_levels
    vocab = model.config.qwen2().vocab_size
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(4, vocab, (size, text_tokens), generator=generator)
    ids = torch.cat([text[:, :8], torch.full((size, spec.tokens), 3), text[:, 8:]], dim=1)
    labels = ids.clone()
    labels[:, : 8 + spec.tokens] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "pixel_values": torch.randn(size, 3, spec.image_size, spec.image_size, generator=generator).to(device),
            "e3fp": torch.randint(0, 4096, (size, 40, levels), generator=generator).to(device)}


def train_step(model, optimizer, inputs: dict, bf16: bool) -> None:
    """One optimizer step as a worker takes it: forward (bf16 autocast on GPUs), backward, clipping."""
    device = inputs["input_ids"].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**inputs).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def loader_rate(image_size: int, image_tokens: int, tokenizer_texts: int = 64) -> float:
    """Samples/s of the loader's per-sample work on one core (PNG decode + resize + tokenize)."""
    from rdkit import Chem

    from deepmolm.data.featurize.render import render_png
    from deepmolm.models.deepmolm.processing import encode_example, image_pixels
    from deepmolm.models.deepmolm.tokenizer import train_bpe

    params = load_params("params.yaml")
    pngs = [render_png(Chem.MolFromSmiles(s), params.featurize.render) for s in SMILES]
    caption = "The molecule is a member of the class of benzoic acids that is salicylic acid acetylated at the hydroxy group. " * 2
    tokenizer = train_bpe([caption] * tokenizer_texts, 500)
    torch.set_num_threads(1)
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < 5:
        image_pixels(pngs[count % len(pngs)], image_size)
        encode_example("Describe the input molecule.", caption, tokenizer, image_tokens, 4096)
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--language", choices=sorted(LANGUAGE), help="a Qwen2 decoder size instead of the preset's")
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--text-tokens", type=int, default=192, help="prompt and response tokens besides the 256 image tokens")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--activation-checkpointing", action="store_true", help="recompute the LLM's layers in backward")
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = device.type == "cuda"
    params = load_params("params.yaml")
    torch.manual_seed(0)
    model, counts = build(params, args.preset, args.language, args.stage, device, args.vocab)
    if args.activation_checkpointing:
        model.language_model.gradient_checkpointing_enable()
    stage = params.train.stage(args.stage)
    optimizer = torch.optim.AdamW(param_groups(model, stage.weight_decay), lr=stage.learning_rate,
                                  fused=device.type == "cuda")
    inputs = batch(model, args.batch, args.text_tokens, device)

    def step() -> None:
        train_step(model, optimizer, inputs, bf16)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up: kernels, optimizer state
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    sync()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - started) / args.steps
    tokens = inputs["input_ids"].numel()
    samples_per_s = args.batch / seconds
    loader = loader_rate(model.config.encoder_spec().image_size, model.config.encoder_spec().tokens)
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
        "preset": args.preset, "language": args.language or args.preset, "stage": args.stage, "batch": args.batch,
        "tokens_per_sample": tokens // args.batch, "parameters": counts["trainable"] + counts["frozen"],
        "trainable": counts["trainable"], "precision": "bf16" if bf16 else "fp32",
        "step_s": round(seconds, 4), "samples_per_s": round(samples_per_s, 2), "tokens_per_s": round(tokens / seconds, 1),
        "tflop_per_step": round(flops / 1e12, 3), "achieved_tflops": round(flops / seconds / 1e12, 2),
        "mfu": round(flops / seconds / (args.peak_tflops * 1e12), 4), "peak_tflops": args.peak_tflops,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1) if device.type == "cuda" else None,
        "loader_samples_per_s_per_core": round(loader, 1),
        "loader_cores_needed": round(samples_per_s / loader, 2),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

"""Which of torch's CPU code paths change stage 1's first optimizer step, and what pinning them costs.

Each setting runs in a process of its own (the libraries read their settings once, at their first
use): the same initial weights and the same batch (written once, under the pin), one stage-1 step as
a Ray Train worker takes it (the demo's `cpu` preset, the projector and the random parts trained,
AdamW, clipping), then every parameter compared tensor by tensor with the first setting's. Then
`--steps` more steps, timed: steps/s with and without the pin, measured in this one run.

The settings are the ways one machine imitates another: ATen's instruction set (ATEN_CPU_CAPABILITY),
oneMKL's code branch (MKL_CBWR; on an AMD processor oneMKL runs no Intel-only branch and reads AVX2
as AUTO), oneDNN on or off, 1 or 2 threads; and the pin (params.yaml `numerics`, applied as the
training workers apply it) under two outer environments that each stand for one machine.

    python -m benchmarks.numerics [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from deepmolm.runtime.run_log import processor

# (name, outer environment, pinned): the first is the reference of the unpinned rows, the first pinned row of the pinned
SETTINGS = [
    ("as it comes, 1 thread", {}, False),
    ("ATen avx2", {"ATEN_CPU_CAPABILITY": "avx2"}, False),
    ("ATen default (no AVX)", {"ATEN_CPU_CAPABILITY": "default"}, False),
    ("oneMKL AVX2 branch", {"MKL_CBWR": "AVX2"}, False),
    ("oneMKL COMPATIBLE", {"MKL_CBWR": "COMPATIBLE"}, False),
    ("oneMKL COMPATIBLE,STRICT", {"MKL_CBWR": "COMPATIBLE,STRICT"}, False),
    ("oneDNN off", {"DEEPMOLM_BENCH_ONEDNN": "0"}, False),
    ("2 threads", {"OMP_NUM_THREADS": "2"}, False),
    ("pinned", {}, True),
    # what the other machine would choose by itself: oneMKL's and oneDNN's AVX-512 paths, ATen's AVX-512, 2 threads
    ("pinned, outer env of another machine", {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AVX512",
                                              "MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
                                              "OMP_NUM_THREADS": "2"}, True),
    # the one oneMKL branch that is documented to give the same bits on Intel and AMD processors
    ("pinned, oneMKL COMPATIBLE,STRICT", {"DEEPMOLM_BENCH_MKL_CBWR": "COMPATIBLE,STRICT"}, True),
]


def child(work: Path, pinned: bool, steps: int, out: Path) -> None:
    """One setting: the first step's parameters to `out`, then steps/s (JSON on stdout)."""
    from deepmolm.config import load_params
    from deepmolm.runtime import numerics

    branch = os.environ.get("DEEPMOLM_BENCH_MKL_CBWR")
    params = load_params("params.yaml", [f"numerics.mkl_cbwr={branch}"] if branch else [])
    if pinned:
        numerics.pin(params.numerics, params.numerics.worker_threads)
    import torch
    from safetensors.torch import load_file, load_model, save_file

    if not pinned:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        torch.backends.mkldnn.enabled = os.environ.get("DEEPMOLM_BENCH_ONEDNN", "1") == "1"
    from benchmarks.train_throughput import train_step
    from deepmolm.training.strategy import param_groups

    model, stage = _model(params)
    load_model(model, str(work / "init.safetensors"))
    batch = load_file(work / "batch.safetensors")
    optimizer = torch.optim.AdamW(param_groups(model, stage.weight_decay), lr=stage.learning_rate)
    train_step(model, optimizer, batch, bf16=False)
    save_file({name: p.detach().contiguous() for name, p in model.named_parameters()}, str(out))
    started = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, batch, bf16=False)
    print(json.dumps({"steps_per_s": steps / (time.perf_counter() - started), **numerics.applied()}))


def _model(params):
    from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
    from deepmolm.models.deepmolm.presets import model_config
    from deepmolm.training.deepmolm.stages import random_parts, set_trainable

    model = DeepMoLMForCausalLM(model_config(params, "cpu", vocab_size=3000, image_token_id=3, number_token_id=7))
    set_trainable(model, params.train.stage(1), random_parts(params, 1))
    return model.train(), params.train.stage(1)


def prepare(work: Path) -> None:
    """The initial weights and one micro-batch of the demo's shapes, made under the pin."""
    from deepmolm.config import load_params
    from deepmolm.runtime import numerics

    params = load_params("params.yaml")
    numerics.pin(params.numerics, params.numerics.worker_threads)
    import torch
    from safetensors.torch import save_file, save_model

    from benchmarks.train_throughput import batch

    torch.manual_seed(0)
    model, _ = _model(params)
    save_model(model, str(work / "init.safetensors"))
    save_file({k: v.contiguous() for k, v in batch(model, params.train.micro_batch_size, 96, torch.device("cpu")).items()},
              str(work / "batch.safetensors"))


def compare(ours: Path, reference: Path) -> dict:
    from safetensors.torch import load_file

    a, b = load_file(ours), load_file(reference)
    differing = {name: float((a[name] - b[name]).abs().max()) for name in a if not (a[name] == b[name]).all()}
    top = sorted(differing, key=differing.get, reverse=True)[:3]
    return {"tensors": len(a), "differ": len(differing), "max_abs": max(differing.values(), default=0.0),
            "largest": [f"{name} {differing[name]:.1e}" for name in top]}


def run(setting: tuple[str, dict, bool], work: Path, steps: int, out: Path) -> dict:
    name, extra, pinned = setting
    env = {key: value for key, value in os.environ.items()
           if key not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update({"OMP_NUM_THREADS": "1"}, **extra)  # as a Ray worker of one CPU starts
    args = [sys.executable, "-m", "benchmarks.numerics", "--child", str(work), "--out", str(out), "--steps", str(steps)]
    result = subprocess.run(args + (["--pinned"] if pinned else []), env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{name}: {result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child")
    parser.add_argument("--out")
    parser.add_argument("--pinned", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(Path(args.child), args.pinned, args.steps, Path(args.out))
        return
    print(f"processor: {processor()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare_in_child(work)
        rows, reference = [], {}
        for index, setting in enumerate(SETTINGS):
            out = work / f"step{index}.safetensors"
            measured = run(setting, work, args.steps, out)
            pinned = setting[2]
            reference.setdefault(pinned, out)
            rows.append({"setting": setting[0], **measured, **compare(out, reference[pinned])})
            row = rows[-1]
            print(f"{row['setting']:<40} {row['aten_cpu_capability']:>7} {str(row['mkl_cbwr']):>18} onednn={row['onednn']!s:<5} "
                  f"threads={row['threads']} | {row['differ']:>3}/{row['tensors']} tensors differ from "
                  f"{'the pinned' if pinned else 'the first'} (max {row['max_abs']:.1e}) | {row['steps_per_s']:.2f} steps/s",
                  flush=True)
            for line in row["largest"]:
                print(f"{'':<44}{line}")
    unpinned = rows[0]["steps_per_s"]
    for row in rows:
        if row["setting"].startswith("pinned"):
            print(f"{row['setting']} / as it comes: {row['steps_per_s'] / unpinned:.3f} of the steps/s")
    print(json.dumps(rows))


def prepare_in_child(work: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR")}
    code = f"from benchmarks.numerics import prepare; from pathlib import Path; prepare(Path({str(work)!r}))"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)


if __name__ == "__main__":
    main()

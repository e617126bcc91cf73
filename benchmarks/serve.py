"""`deepmolm serve` from the outside: time to the first answer after start, and answers per second,
one request at a time and 20 at once, for a trained checkpoint and for the tiny preset.

Each model is served by its own `deepmolm serve --port 0` process, started by this script and asked
over HTTP as a user's script would. The tiny model is random (the unit tests' size, with the
trained checkpoint's tokenizer): its answers are noise, its timings are what the plumbing costs.

    python -m benchmarks.serve --checkpoint models/stage2 --shards data/shards/chebi20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch

from deepmolm.config import load_params
from deepmolm.models.deepmolm.modeling import DeepMoLMForCausalLM
from deepmolm.models.deepmolm.presets import model_config
from deepmolm.models.deepmolm.tokenizer import image_token_id, load_tokenizer

MOLECULES = ["CC(=O)Oc1ccccc1C(=O)O", "CN1C=NC2=C1C(=O)N(C(=O)N2C)C", "OC(=O)CCC(=O)O", "C1=CC=C(C=C1)O",
             "CC(C)CC1=CC=C(C=C1)C(C)C(=O)O", "OCC(O)CO", "NCCc1ccc(O)c(O)c1", "CC(=O)NC1=CC=C(O)C=C1"]
MW_PROMPT = "What is the molecular weight of this molecule?"


def tiny_checkpoint(tokenizer_dir: Path, params_path: Path, out: Path) -> Path:
    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    config = model_config(load_params(params_path, []), "tiny", vocab_size=len(tokenizer),
                          image_token_id=image_token_id(tokenizer))
    DeepMoLMForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def ask(url: str, smiles: str, prompt: str | None = None) -> dict:
    body = {"smiles": smiles, **({"prompt": prompt} if prompt else {})}
    response = httpx.post(url + "api/predict", json=body, timeout=600)
    response.raise_for_status()
    return response.json()


def measure(name: str, checkpoint: Path, args) -> dict:
    command = [sys.executable, "-m", "deepmolm", "serve", "--checkpoint", str(checkpoint), "--port", "0", "--json",
               "--params", str(args.params)]
    if args.shards:
        command += ["--shards", str(args.shards)]
    if args.instructions:
        command += ["--instructions", str(args.instructions)]
    started = time.perf_counter()
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        url = json.loads(server.stdout.readline())["url"]
        first = ask(url, MOLECULES[0])
        to_first = time.perf_counter() - started
        timings = {}
        for task, prompt in (("caption", None), ("property_qa", MW_PROMPT)):
            began = time.perf_counter()
            answers = [ask(url, smiles, prompt) for smiles in MOLECULES]
            timings[task] = {"answers_per_s": round(len(answers) / (time.perf_counter() - began), 3),
                             "mean_server_s": round(sum(a["seconds"] for a in answers) / len(answers), 3)}
        began = time.perf_counter()
        with ThreadPoolExecutor(20) as pool:
            burst = list(pool.map(lambda i: ask(url, MOLECULES[i % len(MOLECULES)]), range(20)))
        burst_s = time.perf_counter() - began
        return {"model": name, "checkpoint": str(checkpoint), "seconds_to_first_answer": round(to_first, 2),
                "first_answer": first["answer"][:80], **{f"{k}_{m}": v for k, t in timings.items() for m, v in t.items()},
                "burst_20_seconds": round(burst_s, 2), "burst_answers_per_s": round(len(burst) / burst_s, 3)}
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a trained checkpoint (e.g. models/stage2)")
    parser.add_argument("--shards", type=Path, default=None)
    parser.add_argument("--instructions", type=Path, default=None)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # this process only builds the tiny model; the servers use the cores
    with tempfile.TemporaryDirectory() as scratch:
        tiny = tiny_checkpoint(args.checkpoint, args.params, Path(scratch) / "tiny")
        rows = [measure("tiny (random)", tiny, args), measure("trained", args.checkpoint, args)]
    print(json.dumps({"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                      "results": rows}, indent=2))
    print(f"\n{'model':<16}{'first answer s':>16}{'captions/s':>12}{'properties/s':>14}{'20 at once /s':>15}")
    for row in rows:
        print(f"{row['model']:<16}{row['seconds_to_first_answer']:>16}{row['caption_answers_per_s']:>12}"
              f"{row['property_qa_answers_per_s']:>14}{row['burst_answers_per_s']:>15}")


if __name__ == "__main__":
    main()

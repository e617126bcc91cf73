"""How a trained model answers when its inputs are worse than training's, which the paper leaves open.

Geometry: the E3FP identifiers recomputed from each molecule's own conformer (the shard's heavy-atom
coordinates) as they are, with Gaussian noise of each `coordinate_noise` sigma on every coordinate,
and from a fresh ETKDG embedding without the MMFF optimisation. Drawings: the training drawing
JPEG-compressed, blurred, and the molecule drawn again in another style (thicker bonds, larger
labels, stereo as plain bonds). Two controls measure what each input is worth at all: no E3FP, and
a white picture. Every perturbation answers the same held-out examples as the
evaluate stage (the first `max_molecules` molecules of eval.splits) and gets the same metrics, beside
the unperturbed inputs; "recomputed" separates what recomputing E3FP changes from what the noise does.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from rdkit import Chem

from deepmolm.config import ConformerParams, E3fpParams, Params, RenderParams, RobustnessParams
from deepmolm.data.featurize.conformer import make_conformer
from deepmolm.data.featurize.e3fp_tokens import e3fp_atom_identifiers
from deepmolm.data.featurize.render import draw_png
from deepmolm.data.instructions import instruction_shards
from deepmolm.data.shards.parts import read_shards
from deepmolm.evaluation.captions import load_metric_tokenizer
from deepmolm.evaluation.evaluate import evaluation_rows, scored
from deepmolm.evaluation.outputs import evaluation_dir
from deepmolm.evaluation.model_answers import answer_examples
from deepmolm.models.deepmolm.configuration import DeepMoLMConfig
from deepmolm.models.deepmolm.generation import task_decoding
from deepmolm.models.deepmolm.processing import image_pixels
from deepmolm.runtime.progress import progress_bar
from deepmolm.runtime.run_log import log_run, portable_path

RESULTS = "robustness.json"
TABLE = "robustness.md"
DRAWINGS = "drawings"  # one molecule's drawing under each drawing perturbation, 384 px


@dataclass(frozen=True)
class Perturbation:
    name: str
    kind: str  # none | geometry | drawing
    description: str
    # (cid, the shard row: smiles, coords, e3fp, image_png) -> the new E3FP (geometry) or PNG (drawing)
    change: Callable[[int, dict], object] | None = None


def perturbations(params: Params) -> list[Perturbation]:
    """The grid, each with what it does to one molecule."""
    cfg, featurize = params.eval.robustness, params.featurize
    conformer, e3fp = featurize.conformer, featurize.e3fp

    def from_coordinates(sigma: float) -> Callable[[int, dict], object]:
        # per molecule: the same noise in any order or subset of molecules
        return lambda cid, row: e3fp_from_coordinates(row["smiles"], row["coords"], sigma,
                                                      np.random.default_rng([cfg.seed, cid]), conformer, e3fp)

    style = cfg.restyle
    return [
        Perturbation("none", "none", "the inputs training saw"),
        Perturbation("coords_recomputed", "geometry", "E3FP recomputed from the conformer's heavy-atom coordinates",
                     from_coordinates(0.0)),
        *(Perturbation(f"coords_noise_{sigma:g}", "geometry", f"E3FP from the conformer with {sigma:g} A Gaussian noise",
                       from_coordinates(sigma)) for sigma in cfg.coordinate_noise),
        Perturbation("etkdg_no_mmff", "geometry", "E3FP from a new ETKDG conformer, not MMFF-optimised",
                     lambda cid, row: e3fp_without_mmff(row["smiles"], conformer, e3fp)),
        Perturbation("no_geometry", "geometry", "no E3FP at all (a control: what the geometry is worth)",
                     lambda cid, row: None),
        Perturbation("blank_drawing", "drawing", "a white picture (a control: what the drawing is worth)",
                     lambda cid, row: blank_png(row["image_png"])),
        Perturbation(f"jpeg_q{cfg.jpeg_quality}", "drawing", f"the drawing as a JPEG of quality {cfg.jpeg_quality}",
                     lambda cid, row: jpeg_png(row["image_png"], cfg.jpeg_quality)),
        Perturbation(f"blur_{cfg.blur_radius:g}px", "drawing", f"the drawing under a Gaussian blur of {cfg.blur_radius:g} px",
                     lambda cid, row: blurred_png(row["image_png"], cfg.blur_radius)),
        Perturbation("restyled", "drawing", f"drawn again: bonds {style.bond_line_width:g} px, labels {style.font_size} px, "
                     f"stereo wedges {'on' if style.stereo_wedges else 'off'}",
                     lambda cid, row: restyled_png(row["smiles"], featurize.render, cfg)),
    ]


# --- the perturbations themselves: one molecule in, its perturbed input out ----------------------------------

def e3fp_from_coordinates(smiles: str, coords: list | None, sigma: float, rng: np.random.Generator,
                          conformer: ConformerParams, e3fp: E3fpParams) -> list | None:
    """E3FP identifiers of the shard's conformer (heavy atoms in the canonical SMILES' order) after
    Gaussian noise of `sigma` Angstrom per coordinate; None without a conformer."""
    if coords is None:
        return None
    positions = np.asarray(coords, dtype=float)
    if sigma:
        positions = positions + rng.normal(0.0, sigma, positions.shape)
    built = make_conformer(Chem.MolFromSmiles(smiles), conformer, pubchem_coords=positions)
    return None if built.mol is None else e3fp_atom_identifiers(built.mol, e3fp).tolist()


def e3fp_without_mmff(smiles: str, conformer: ConformerParams, e3fp: E3fpParams) -> list | None:
    built = make_conformer(Chem.MolFromSmiles(smiles), conformer.model_copy(update={"mmff": False, "method": "etkdg"}))
    return None if built.mol is None else e3fp_atom_identifiers(built.mol, e3fp).tolist()


def jpeg_png(png: bytes, quality: int) -> bytes:
    """The drawing after a round trip through JPEG (its blocks and ringing), as PNG bytes again."""
    with Image.open(io.BytesIO(png)) as image:
        compressed = io.BytesIO()
        image.convert("RGB").save(compressed, format="JPEG", quality=quality)
    return _png(Image.open(compressed))


def blank_png(png: bytes) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return _png(Image.new("RGB", image.size, (255, 255, 255)))


def blurred_png(png: bytes, radius: float) -> bytes:
    with Image.open(io.BytesIO(png)) as image:
        return _png(image.convert("RGB").filter(ImageFilter.GaussianBlur(radius)))


def restyled_png(smiles: str, render: RenderParams, cfg: RobustnessParams) -> bytes:
    style = cfg.restyle
    return draw_png(Chem.MolFromSmiles(smiles), size=render.size, bond_line_width=style.bond_line_width,
                    padding=render.padding, font_size=style.font_size, stereo_wedges=style.stereo_wedges)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _thumbnail(png: bytes, path: Path) -> str:
    """A 384-px copy of a drawing (a box filter, so JPEG blocks and blur stay visible); its file name."""
    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").resize((384, 384), Image.Resampling.BOX).save(path)
    return f"{DRAWINGS}/{path.name}"


def changed_share(ours: list | None, theirs: list | None) -> float | None:
    """Share of (atom, level) identifiers that differ between two E3FP tables of one molecule."""
    if ours is None or theirs is None:
        return None
    a, b = np.asarray(ours), np.asarray(theirs)
    return float((a != b).mean()) if a.shape == b.shape and a.size else 1.0


# --- the run --------------------------------------------------------------------------------------------------

def perturbed_molecules(perturbation: Perturbation, molecules: dict[int, dict]) -> dict[int, dict]:
    """cid -> {"e3fp", "image_png"} as `perturbation` changes them (the shard's where it does not)."""
    out = {}
    for cid, row in molecules.items():
        changed = perturbation.change(cid, row) if perturbation.change else None
        out[cid] = {"e3fp": changed if perturbation.kind == "geometry" else row["e3fp"],
                    "image_png": changed if perturbation.kind == "drawing" else row["image_png"]}
    return out


def robustness(params: Params, model_dir: Path, instructions: Path, out: Path | None = None,
               progress: bool = False) -> dict:
    """Answer and score the held-out examples under every perturbation; write RESULTS and TABLE."""
    started = time.perf_counter()
    cfg = params.eval.robustness
    out = Path(out) if out else evaluation_dir(params) / "robustness"
    rows = evaluation_rows(params, instructions)
    cids = list(dict.fromkeys(r["cid"] for r in rows))[: cfg.max_molecules]
    if not cids:
        raise ValueError(f"instruction set {instructions} has no examples of splits {params.eval.splits}")
    rows = [r for r in rows if r["cid"] in set(cids)]
    table = read_shards(instruction_shards(instructions), columns=["cid", "smiles", "coords", "e3fp", "image_png"])
    molecules = {r["cid"]: r for r in table.to_pylist() if r["cid"] in set(cids)}
    size = DeepMoLMConfig.from_pretrained(model_dir).encoder_spec().image_size
    metric_tokenizer = load_metric_tokenizer(params.eval.tokenizer)
    results, drawings = [], {}
    (out / DRAWINGS).mkdir(parents=True, exist_ok=True)
    for perturbation in perturbations(params):
        inputs = perturbed_molecules(perturbation, molecules)
        drawing: Callable[[dict], torch.Tensor] | None = None
        if perturbation.kind == "drawing":
            drawing = lambda row, inputs=inputs: image_pixels(inputs[row["cid"]]["image_png"], size)  # noqa: E731
        asked = [{**r, "e3fp": inputs[r["cid"]]["e3fp"]} for r in rows]
        with progress_bar(f"robustness: {perturbation.name}", len(asked), enabled=progress) as advance:
            answers = answer_examples(model_dir, instructions, asked, batch_size=params.eval.batch_size,
                                      decoding=lambda task: task_decoding(params, task), advance=advance, drawing=drawing)
        changed = [c for cid in cids if (c := changed_share(inputs[cid]["e3fp"], molecules[cid]["e3fp"])) is not None]
        if perturbation.kind in ("none", "drawing"):  # what the first molecule's drawing became, for the page
            drawings[perturbation.name] = _thumbnail(inputs[cids[0]]["image_png"], out / DRAWINGS / f"{perturbation.name}.png")
        results.append({"name": perturbation.name, "kind": perturbation.kind, "description": perturbation.description,
                         **scored(params, {r["example_id"]: r["task"] for r in rows}, answers, metric_tokenizer),
                         "e3fp_changed": round(sum(changed) / len(changed), 4) if changed else None,
                         "without_geometry": sum(inputs[cid]["e3fp"] is None for cid in cids)})
    report = {"model": portable_path(model_dir), "instructions": portable_path(instructions),
              "eval_splits": list(params.eval.splits), "molecules": len(cids), "examples": len(rows),
              "seed": cfg.seed, "perturbations": results, "drawings": {"cid": cids[0], **drawings}}
    (out / RESULTS).write_text(json.dumps(report, indent=2) + "\n")
    (out / TABLE).write_text(robustness_markdown(report))
    seconds = round(time.perf_counter() - started, 1)
    log_run(params.paths.logs_dir, "robustness", out, model=str(model_dir), seconds=seconds)
    return {**report, "out": str(out), "seconds": seconds}


ROBUSTNESS_COLUMNS = ("BLEU-2", "BLEU-4", "ROUGE-1", "ROUGE-2", "ROUGE-L", "METEOR")


def robustness_rows(report: dict) -> list[list[str]]:
    """One row per perturbation: the caption metrics, the share of valid property answers, the MAE
    of each property, and how much of the E3FP changed."""
    def fmt(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    rows = []
    for p in report["perturbations"]:
        captions = p["captions"] or {}
        properties = [s for s in (p["properties"] or {}).values() if s["n"]]
        valid = sum(s["valid"] for s in properties) / max(1, sum(s["n"] for s in properties))
        maes = {name: s["mae"] for name, s in (p["properties"] or {}).items() if s["mae"] is not None}
        rows.append([p["name"], *(fmt(captions.get(k)) for k in ("bleu2", "bleu4", "rouge1", "rouge2", "rougeL", "meteor")),
                     fmt(valid, 2), ", ".join(f"{k} {v:.2f}" for k, v in sorted(maes.items())) or "-",
                     fmt(p["e3fp_changed"], 2)])
    return rows


def robustness_markdown(report: dict) -> str:
    head = ["perturbation", *ROBUSTNESS_COLUMNS, "valid answers", "property MAE", "E3FP changed"]
    lines = [f"Robustness of {report['model']} on {report['molecules']} molecules ({report['examples']} examples) "
             f"of {', '.join(report['eval_splits'])}; noise seed {report['seed']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in robustness_rows(report)]
    lines += ["", *(f"- `{p['name']}`: {p['description']}" for p in report["perturbations"])]
    return "\n".join(lines) + "\n"

"""What the Fusion Projector's cross-attention looks at: for a few held-out molecules, how much each
visual token (a cell of the drawing's token grid) attends to each heavy atom's E3FP tokens, drawn
over the drawing the model read, beside the molecule with its atom numbers.

If the projector grounds the drawing in the geometry, an atom's map should light up where the atom
is drawn; a map that is the same for every atom, or attention that goes to the null key, says it does
not. Only the cross-attention variants (`fusion`) have such a map.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rdkit import Chem

from deepmolm.config import Params
from deepmolm.data.featurize.render import draw_png
from deepmolm.data.instructions import instruction_shards
from deepmolm.data.shards.parts import read_shards
from deepmolm.evaluation.outputs import GROUNDING
from deepmolm.models.deepmolm.fusion import CrossAttentionProjector
from deepmolm.models.deepmolm.generation import load_checkpoint
from deepmolm.models.deepmolm.processing import cached_pixels, normalise_pixels

ATOMS_SHOWN = 3  # the atoms that draw the most attention, per molecule


@torch.inference_mode()
def atom_attention(model, pixels: torch.Tensor, e3fp: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """One molecule ([3, S, S] uint8, [atoms, levels]): each atom's attention from every visual token
    as [grid, grid, atoms] (its levels summed), and the null key's share as [grid, grid]."""
    weights = model.projector.attention(model.encoder(normalise_pixels(pixels[None], model.config.encoder_spec())), e3fp[None])[0]
    weights = weights.float()  # a bf16 model's attention: numpy has no bf16
    tokens, atoms, levels = weights.shape[0], e3fp.shape[0], e3fp.shape[1]
    grid = math.isqrt(tokens)
    per_atom = weights[:, 1:].reshape(tokens, atoms, levels).sum(dim=-1)
    return per_atom.reshape(grid, grid, atoms).numpy(), weights[:, 0].reshape(grid, grid).numpy()


def grounding_molecules(rows: list[dict], count: int) -> list[dict]:
    """The first `count` molecules of the evaluation rows that have E3FP, one row each."""
    chosen: dict[int, dict] = {}
    for row in rows:
        if row["e3fp"] and row["cid"] not in chosen and len(chosen) < count:
            chosen[row["cid"]] = row
    return list(chosen.values())


def write_grounding(params: Params, model_dir: Path, instructions: Path, rows: list[dict], out: Path,
                    count: int = 3) -> dict:
    """GROUNDING under `out` for the first `count` molecules of `rows`, and what it shows. A projector
    without cross-attention to the geometry (linear, concat, fusion_zero_e3fp) gets a figure that
    says so: the file is the stage's output whatever the variant."""
    model, _ = load_checkpoint(model_dir)
    projector = model.projector
    molecules = grounding_molecules(rows, count)
    if not isinstance(projector, CrossAttentionProjector) or projector.zero_e3fp or not molecules:
        why = (f"the {model.config.fusion_spec().variant} projector has no cross-attention to the E3FP tokens"
               if molecules else "no held-out molecule has E3FP")
        _plot_nothing(why, out / GROUNDING)
        return {"figure": GROUNDING, "molecules": [], "why_empty": why}
    size, shards = model.config.encoder_spec().image_size, instruction_shards(instructions)
    table = read_shards(shards, columns=["cid", "smiles"])
    smiles = dict(zip(table.column("cid").to_pylist(), table.column("smiles").to_pylist()))
    shown = []
    for row in molecules:
        pixels = cached_pixels(str(shards / row["image_part"]), row["image_row"], size)
        per_atom, null = atom_attention(model, pixels, torch.as_tensor(row["e3fp"], dtype=torch.long))
        total = per_atom.sum(axis=(0, 1))
        top = [int(i) for i in np.argsort(-total, kind="stable")[:ATOMS_SHOWN]]
        shown.append({"cid": row["cid"], "smiles": smiles[row["cid"]], "pixels": pixels, "maps": per_atom,
                      "atoms": top, "shares": [float(total[i] / per_atom.shape[0] / per_atom.shape[1]) for i in top],
                      "null_share": float(null.mean())})
    _plot(shown, params, out / GROUNDING)
    return {"figure": GROUNDING, "molecules": [{"cid": m["cid"], "atoms": m["atoms"], "shares": [round(s, 4) for s in m["shares"]],
                                                "null_share": round(m["null_share"], 4)} for m in shown]}


def _plot(shown: list[dict], params: Params, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    render = params.featurize.render
    fig, axes = plt.subplots(len(shown), 2 + ATOMS_SHOWN, figsize=(3.0 * (2 + ATOMS_SHOWN), 3.1 * len(shown)), squeeze=False)
    for ax_row, m in zip(axes, shown):
        numbered = draw_png(Chem.MolFromSmiles(m["smiles"]), size=512, bond_line_width=render.bond_line_width,
                            padding=render.padding, atom_indices=True)
        ax_row[0].imshow(Image.open(io.BytesIO(numbered)))
        ax_row[0].set_title(f"CID {m['cid']}: atoms numbered", fontsize=9)
        drawing = m["pixels"].permute(1, 2, 0).numpy()
        size = drawing.shape[0]
        brightest = max(float(m["maps"][:, :, atom].max()) for atom in m["atoms"])  # one scale for a molecule's atoms
        for ax, atom, share in zip(ax_row[1:-1], m["atoms"], m["shares"]):
            ax.imshow(drawing, cmap="gray")
            ax.imshow(m["maps"][:, :, atom], cmap="magma", alpha=0.55, extent=(0, size, size, 0), interpolation="nearest",
                      vmin=0.0, vmax=brightest)
            ax.set_title(f"atom {atom}: {share:.1%} of the attention", fontsize=9)
        for ax in ax_row[1 + len(m["atoms"]):-1]:  # a molecule of fewer atoms
            ax.axis("off")
        ax_row[-1].imshow(drawing, cmap="gray")
        ax_row[-1].imshow(m["maps"].sum(axis=-1), cmap="viridis", alpha=0.55, extent=(0, size, size, 0), interpolation="nearest")
        ax_row[-1].set_title(f"every atom; the null key has {m['null_share']:.1%}", fontsize=9)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Fusion Projector cross-attention: visual tokens (grid over the model's input drawing) to each atom's E3FP tokens",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_nothing(why: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 1.2))
    ax.axis("off")
    ax.text(0.5, 0.5, f"No grounding map: {why}.", ha="center", va="center", fontsize=10)
    fig.savefig(path, dpi=90)
    plt.close(fig)

"""What the DeepEncoder is pretrained on: a molecule drawn in a randomly varied style, and, for each of
the encoder's output tokens, how many atoms of each kind are drawn in the patch of the picture it
stands for. RDKit computes both for free, so any SMILES (MOSES's 1.58M included) is a training example.

Why atoms per token and not the molecule's fingerprint: a per-molecule target has to be read through
a pooled summary of all tokens, and the small random encoder learns it slowly (measured in
docs/benchmarks.md); a per-token target tells every token what is under it, which is also what the
Fusion Projector's grounding and the language model need from it. Their sum is the molecule's
composition, so counts and size are learned with it.

The style varies as drawings in the wild do: rotation, bond width, label size; the drawing is made at
`render_factor` times the model's size and shrunk by the code that shrinks the training drawings
(processing.image_pixels), so pretraining and training see ink of the same kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from rdkit import Chem
from rdkit.Chem import rdDepictor, rdMolTransforms
from rdkit.Chem.Draw import rdMolDraw2D

from deepmolm.models.deepmolm.processing import image_pixels

# One channel per kind of atom, and one more for atoms in an aromatic ring (drawn as such by the
# kekulized bonds' pattern): what a chemist reads first from a drawing.
ATOM_KINDS = ("C", "N", "O", "S", "halogen", "other", "aromatic")
_KIND = {6: 0, 7: 1, 8: 2, 16: 3, 9: 4, 17: 4, 35: 4, 53: 4}


@dataclass(frozen=True)
class DrawingStyle:
    """Ranges drawn from per example (uniformly); a range of one value fixes it."""

    rotation_deg: float = 180.0            # rotated by up to +- this
    bond_line_width: tuple[float, float] = (1.5, 3.0)  # at 1,024 px, scaled with the canvas
    font_scale: tuple[float, float] = (0.5, 0.8)       # RDKit's baseFontSize (its default 0.6)
    padding: float = 0.05


def atom_kinds(mol: Chem.Mol) -> np.ndarray:
    """[atoms, len(ATOM_KINDS)] one-hot kind plus the aromatic flag, in the molecule's atom order."""
    kinds = np.zeros((mol.GetNumAtoms(), len(ATOM_KINDS)), dtype=np.float32)
    for atom in mol.GetAtoms():
        kinds[atom.GetIdx(), _KIND.get(atom.GetAtomicNum(), 5)] = 1.0
        kinds[atom.GetIdx(), 6] = float(atom.GetIsAromatic())
    return kinds


def draw_with_atom_positions(mol: Chem.Mol, *, size: int, style: DrawingStyle, rng: np.random.Generator
                             ) -> tuple[bytes, np.ndarray]:
    """A PNG of `size` px in a style drawn from `style`, and each atom's drawn position [atoms, 2] as
    fractions of the canvas (x right, y down)."""
    drawn = Chem.Mol(mol)
    rdDepictor.Compute2DCoords(drawn, canonOrient=True)
    angle = math.radians(rng.uniform(-style.rotation_deg, style.rotation_deg))
    rotation = np.eye(4)
    rotation[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    rdMolTransforms.TransformConformer(drawn.GetConformer(), rotation)
    Chem.WedgeMolBonds(drawn, drawn.GetConformer())
    drawer = rdMolDraw2D.MolDraw2DCairo(size, size)
    options = drawer.drawOptions()
    options.bondLineWidth = rng.uniform(*style.bond_line_width) * size / 1024
    options.baseFontSize = rng.uniform(*style.font_scale)
    options.padding = style.padding
    options.clearBackground = True
    options.setBackgroundColour((1.0, 1.0, 1.0, 1.0))
    options.addStereoAnnotation = False
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, drawn, kekulize=True)
    drawer.FinishDrawing()
    points = [drawer.GetDrawCoords(i) for i in range(drawn.GetNumAtoms())]
    return drawer.GetDrawingText(), np.array([[p.x, p.y] for p in points], dtype=np.float64) / size


def atoms_per_cell(positions: np.ndarray, kinds: np.ndarray, grid: int) -> np.ndarray:
    """[grid * grid, kinds] counts of each kind of atom whose drawn centre falls in each cell, cells in
    the encoder's token order (row by row)."""
    cells = np.clip((positions * grid).astype(np.int64), 0, grid - 1)
    counts = np.zeros((grid * grid, kinds.shape[1]), dtype=np.float32)
    np.add.at(counts, cells[:, 1] * grid + cells[:, 0], kinds)
    return counts


def pretraining_example(smiles: str, *, image_size: int, grid: int, render_factor: int, style: DrawingStyle,
                        seed: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | str:
    """(pixels [3, S, S] uint8, atoms per token [grid * grid, kinds]) for one SMILES in a style drawn
    with `seed`; or why not (a rejection reason)."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return "unparseable_smiles"
    if mol.GetNumAtoms() == 0:
        return "no_atoms"
    png, positions = draw_with_atom_positions(mol, size=image_size * render_factor, style=style,
                                              rng=np.random.default_rng(list(seed)))
    return image_pixels(png, image_size), torch.from_numpy(atoms_per_cell(positions, atom_kinds(mol), grid))

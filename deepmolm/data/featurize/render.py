"""A molecule drawn by RDKit as a square RGB PNG, stereo shown as wedge and hash bonds."""

from __future__ import annotations

from rdkit import Chem
from rdkit.Chem import rdDepictor
from rdkit.Chem.Draw import rdMolDraw2D

from deepmolm.config import RenderParams


def render_png(mol: Chem.Mol, params: RenderParams) -> bytes:
    """PNG bytes; the same molecule and params give the same bytes.

    RDKit's 2D depiction is deterministic for a given molecule; canonOrient fixes the rotation.
    """
    return draw_png(mol, size=params.size, bond_line_width=params.bond_line_width, padding=params.padding)


def draw_png(mol: Chem.Mol, *, size: int, bond_line_width: float, padding: float, font_size: int | None = None,
             stereo_wedges: bool = True, atom_indices: bool = False) -> bytes:
    """The drawing with its style spelled out: the training images' (`render_png`), or another one
    for robustness checks (thicker bonds, larger labels, stereo as plain bonds) and figures (atoms
    numbered as the per-atom arrays are). `font_size`: atom labels at a fixed size in pixels; None:
    RDKit scales them with the drawing."""
    drawn = Chem.Mol(mol)
    rdDepictor.Compute2DCoords(drawn, canonOrient=True)
    if stereo_wedges:
        Chem.WedgeMolBonds(drawn, drawn.GetConformer())
    drawer = rdMolDraw2D.MolDraw2DCairo(size, size)
    options = drawer.drawOptions()
    options.bondLineWidth = bond_line_width
    options.padding = padding
    options.clearBackground = True
    options.setBackgroundColour((1.0, 1.0, 1.0, 1.0))
    options.addStereoAnnotation = False
    if font_size is not None:
        options.fixedFontSize = font_size
    if atom_indices:
        options.addAtomIndices = True
        options.annotationFontScale = 0.9  # readable when the figure is shrunk
    if stereo_wedges:
        rdMolDraw2D.PrepareAndDrawMolecule(drawer, drawn, kekulize=True)
    else:
        options.prepareMolsBeforeDrawing = False  # else the drawer wedges them itself
        drawer.DrawMolecule(rdMolDraw2D.PrepareMolForDrawing(drawn, kekulize=True, wedgeBonds=False))
    drawer.FinishDrawing()
    return drawer.GetDrawingText()

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
    drawn = Chem.Mol(mol)
    rdDepictor.Compute2DCoords(drawn, canonOrient=True)
    Chem.WedgeMolBonds(drawn, drawn.GetConformer())
    drawer = rdMolDraw2D.MolDraw2DCairo(params.size, params.size)
    options = drawer.drawOptions()
    options.bondLineWidth = params.bond_line_width
    options.padding = params.padding
    options.clearBackground = True
    options.setBackgroundColour((1.0, 1.0, 1.0, 1.0))
    options.addStereoAnnotation = False
    rdMolDraw2D.PrepareAndDrawMolecule(drawer, drawn, kekulize=True)
    drawer.FinishDrawing()
    return drawer.GetDrawingText()

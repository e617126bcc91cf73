"""`deepmolm predict` and `deepmolm serve`: one molecule in, an answer out.

With a SMILES, the molecule goes through the same featurizer as the shards (RDKit drawing, ETKDG
conformer, E3FP), so the model sees what it was trained on; an SDF given with it supplies the
conformer instead, as PubChem's do in the shards, once its atoms are matched onto the SMILES'. With
a drawing and an SDF, the drawing is used as given and E3FP comes from the SDF's own coordinates.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from rdkit import Chem, rdBase

from deepmolm.config import Params
from deepmolm.data.featurize.e3fp_tokens import e3fp_atom_identifiers
from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.featurize.record import FeaturizeRejection, featurize_row
from deepmolm.data.sources.sdf import heavy_atom_coords
from deepmolm.models.deepmolm.generation import generate_answers, load_checkpoint, task_decoding
from deepmolm.models.deepmolm.processing import e3fp_batch, image_pixels

DEFAULT_PROMPT = "Describe the input molecule."


@dataclass(frozen=True)
class MoleculeInput:
    """What the model reads of one molecule, and what the answer page says about it."""

    png: bytes  # the drawing, before the model's downscaling
    e3fp: np.ndarray | None  # [heavy atoms, levels]; None without a conformer
    conformer_source: str  # etkdg, etkdg_random_coords, pubchem (an SDF given with a SMILES), sdf or none
    smiles: str  # canonical, for the retrieval baseline

    @property
    def e3fp_tokens(self) -> int:
        return 0 if self.e3fp is None else int((self.e3fp >= 0).sum())


def molecule_from_smiles(smiles: str, params: Params, sdf: str | None = None) -> MoleculeInput:
    row = {"cid": 0, "smiles": smiles, "source": "predict", "split": None, "description": None}
    if sdf is not None:
        coords, status = heavy_atom_coords(sdf, smiles)
        if coords is None:
            raise FeaturizeError("sdf_mismatch", f"the SDF's atoms do not match the SMILES ({status})")
        row["coords"] = coords
    record = featurize_row(row, params.featurize)
    if isinstance(record, FeaturizeRejection):
        raise FeaturizeError(record.reason, record.detail)
    e3fp = None if record["e3fp"] is None else np.asarray(record["e3fp"])
    return MoleculeInput(record["image_png"], e3fp, record["conformer_source"], record["smiles"])


def molecule_from_drawing(image: bytes, sdf: str, params: Params) -> MoleculeInput:
    with rdBase.BlockLogs():
        supplier = Chem.SDMolSupplier()
        supplier.SetData(sdf, removeHs=False)
        try:
            mol = supplier[0] if len(supplier) else None
        except (RuntimeError, IndexError):  # RDKit's way of saying the record has no molecule
            mol = None
    if mol is None:
        raise FeaturizeError("unreadable_sdf", "the SDF holds no molecule RDKit can read (its atom or bond block is broken)")
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        raise FeaturizeError("no_conformer", "the SDF's molecule has no 3D coordinates")
    try:
        with Image.open(io.BytesIO(image)) as drawing:
            drawing.load()
            buffer = io.BytesIO()
            drawing.convert("RGB").save(buffer, format="PNG")
    except (UnidentifiedImageError, OSError) as exc:
        raise FeaturizeError("not_an_image", f"the drawing is not an image PIL can read ({exc})") from None
    smiles = Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
    return MoleculeInput(buffer.getvalue(), e3fp_atom_identifiers(mol, params.featurize.e3fp), "sdf", smiles)


def molecule_from_files(image: Path, sdf: Path, params: Params) -> MoleculeInput:
    return molecule_from_drawing(Path(image).read_bytes(), Path(sdf).read_text(errors="replace"), params)


class Predictor:
    """A checkpoint loaded once, answering one molecule at a time (the CLI, the server)."""

    def __init__(self, checkpoint: Path):
        self.checkpoint = Path(checkpoint)
        self.model, self.tokenizer = load_checkpoint(checkpoint)
        self.image_size = self.model.config.encoder_spec().image_size

    def model_view(self, molecule: MoleculeInput) -> torch.Tensor:
        """[3, S, S] uint8: the drawing at the size the model reads it."""
        return image_pixels(molecule.png, self.image_size)

    def answer(self, molecule: MoleculeInput, prompt: str, params: Params, task: str = "caption") -> str:
        geometry = e3fp_batch([molecule.e3fp], self.model.config.fusion_spec().e3fp_levels)
        return generate_answers(self.model, self.tokenizer, [prompt], self.model_view(molecule)[None], geometry,
                                **task_decoding(params, task))[0]

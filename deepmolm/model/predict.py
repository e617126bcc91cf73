"""`deepmolm predict`: one molecule in (a drawing and a 3D structure, or just a SMILES), an answer out.

With a SMILES, the molecule goes through the same featurizer as the shards (RDKit drawing, ETKDG
conformer, E3FP), so the model sees what it was trained on. With a PNG and an SDF, the drawing is
used as given and E3FP comes from the SDF's own 3D coordinates.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rdkit import Chem

from deepmolm.config import Params
from deepmolm.featurize.e3fp_tokens import e3fp_atom_identifiers
from deepmolm.featurize.outcome import FeaturizeError
from deepmolm.featurize.record import FeaturizeRejection, featurize_row
from deepmolm.model.molm import DeepMoLMForCausalLM
from deepmolm.model.tokenizer import load_tokenizer
from deepmolm.train.data import image_pixels, normalise_pixels, prompt_token_ids

DEFAULT_PROMPT = "Describe the input molecule."


def molecule_from_smiles(smiles: str, params: Params) -> tuple[bytes, np.ndarray | None]:
    record = featurize_row({"cid": 0, "smiles": smiles, "source": "predict", "split": None, "description": None},
                           params.featurize)
    if isinstance(record, FeaturizeRejection):
        raise FeaturizeError(record.reason, record.detail)
    return record["image_png"], None if record["e3fp"] is None else np.asarray(record["e3fp"])


def molecule_from_files(image: Path, sdf: Path, params: Params) -> tuple[bytes, np.ndarray]:
    supplier = Chem.SDMolSupplier(str(sdf), removeHs=False)
    mol = next(iter(supplier), None)
    if mol is None or mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        raise FeaturizeError("no_conformer", f"{sdf} holds no molecule with 3D coordinates")
    with Image.open(image) as drawing:  # fails clearly on a file that is not an image
        drawing.load()
        buffer = io.BytesIO()
        drawing.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue(), e3fp_atom_identifiers(mol, params.featurize.e3fp)


def answer(checkpoint: Path, png: bytes, e3fp: np.ndarray | None, prompt: str, params: Params) -> str:
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a DeepMoLM checkpoint (no config.json)")
    model = DeepMoLMForCausalLM.from_pretrained(checkpoint, local_files_only=True).eval()
    tokenizer = load_tokenizer(checkpoint)
    spec = model.config.encoder_spec()
    ids = torch.tensor([prompt_token_ids(prompt, tokenizer, spec.tokens)])
    pixels = normalise_pixels(image_pixels(png, spec.image_size)[None])
    levels = model.config.fusion_spec().e3fp_levels
    geometry = torch.full((1, 1, levels), -1, dtype=torch.long) if e3fp is None else torch.as_tensor(e3fp)[None].long()
    generation = params.model.generation
    new = model.generate_text(ids, torch.ones_like(ids), pixels, geometry, max_new_tokens=generation.max_new_tokens,
                              num_beams=generation.num_beams, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(new[0], skip_special_tokens=True).strip()

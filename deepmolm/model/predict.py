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


def load_checkpoint(checkpoint: Path) -> tuple[DeepMoLMForCausalLM, object]:
    """The model (in eval mode) and tokenizer of a checkpoint directory, read locally only."""
    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a DeepMoLM checkpoint (no config.json)")
    return DeepMoLMForCausalLM.from_pretrained(checkpoint, local_files_only=True).eval(), load_tokenizer(checkpoint)


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, padded on the left so every answer starts right after its prompt."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), longest), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, longest - len(prompt):] = torch.as_tensor(prompt)
        mask[i, longest - len(prompt):] = 1
    return ids, mask


@torch.inference_mode()
def generate_answers(model: DeepMoLMForCausalLM, tokenizer, prompts: list[str], pixels: torch.Tensor,
                     geometry: torch.Tensor, *, max_new_tokens: int, min_new_tokens: int = 0, num_beams: int = 1,
                     repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0) -> list[str]:
    """Answers to a batch of prompts: uint8 drawings [B, 3, S, S] and E3FP [B, atoms, levels] (-1 = none);
    no answer ends before `min_new_tokens`."""
    ids, mask = left_padded([prompt_token_ids(p, tokenizer, model.config.encoder_spec().tokens) for p in prompts],
                            tokenizer.pad_token_id)
    new = model.generate_text(ids, mask, normalise_pixels(pixels), geometry, max_new_tokens=max_new_tokens,
                              min_new_tokens=min_new_tokens, num_beams=num_beams, repetition_penalty=repetition_penalty,
                              no_repeat_ngram_size=no_repeat_ngram_size, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(tokens, skip_special_tokens=True).strip() for tokens in new]


def answer_lengths(params: Params, task: str) -> dict[str, int]:
    """`generate`'s length bounds for a task's answers: a caption is a paragraph (at least
    model.generation.min_new_tokens long), a property answer one sentence."""
    generation = params.model.generation
    if task == "caption":
        return {"max_new_tokens": generation.max_new_tokens, "min_new_tokens": generation.min_new_tokens}
    if task == "property_qa":
        return {"max_new_tokens": params.eval.property_max_new_tokens, "min_new_tokens": 0}
    raise ValueError(f"unknown task {task!r} (caption | property_qa)")


def answer(checkpoint: Path, png: bytes, e3fp: np.ndarray | None, prompt: str, params: Params,
           task: str = "caption") -> str:
    model, tokenizer = load_checkpoint(checkpoint)
    levels = model.config.fusion_spec().e3fp_levels
    geometry = torch.full((1, 1, levels), -1, dtype=torch.long) if e3fp is None else torch.as_tensor(e3fp)[None].long()
    return generate_answers(model, tokenizer, [prompt], image_pixels(png, model.config.encoder_spec().image_size)[None],
                            geometry, **answer_lengths(params, task), **params.model.generation.decoding())[0]

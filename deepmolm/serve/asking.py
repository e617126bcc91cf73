"""One question to a loaded model, checked, answered and timed; the retrieval baseline beside it.

The page and the JSON API both come here, and the answer goes through `Predictor`, the code path of
`deepmolm predict` and of the evaluate stage. Input the server refuses raises `Refused` with the
reason a person reads and an HTTP status (400 bad input, 413 too large, 503 busy). Answers are
computed `serve.concurrency` at a time; other requests wait in line, up to `serve.max_waiting` of
them for at most `serve.wait_timeout_s`, so a burst costs time, not memory. Once `stop()` is called
(the server's Ctrl-C), nobody new gets a turn: a stopping server answers what it is computing and
refuses the line instead of working through it.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rdkit import Chem, rdBase

from deepmolm.config import TASKS, Params
from deepmolm.data.featurize.outcome import FeaturizeError
from deepmolm.data.instructions import instruction_shards, property_answer, property_asked, resolve_instruction_set
from deepmolm.evaluation.baseline import Molecule, RetrievalIndex
from deepmolm.evaluation.evaluate import training_rows
from deepmolm.evaluation.shard_molecules import read_molecules
from deepmolm.inference import MoleculeInput, Predictor, molecule_from_drawing, molecule_from_smiles
from deepmolm.runtime.run_log import project_root
from deepmolm.training.checkpoints import PROVENANCE


TURN_POLL_S = 0.2  # how often a request waiting in line looks whether the server is stopping


class Refused(ValueError):
    """A request the server will not answer, with why (shown on the page, returned by the API)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Question:
    prompt: str
    smiles: str | None = None
    image: bytes | None = None  # a drawing (any format PIL reads), with `sdf`
    sdf: str | None = None  # a 3D structure: with `image`, or with `smiles` as its conformer
    task: str | None = None  # caption | property_qa; None: property_qa for the instruction set's property questions


@dataclass(frozen=True)
class Answer:
    answer: str
    task: str
    molecule: MoleculeInput
    baseline: str | None  # the nearest training molecule's description or property value
    nearest: dict | None  # that molecule: cid, smiles, similarity
    seconds: float

    def as_json(self) -> dict:
        return {"answer": self.answer, "task": self.task, "baseline": self.baseline, "nearest": self.nearest,
                "conformer_source": self.molecule.conformer_source, "e3fp_tokens": self.molecule.e3fp_tokens,
                "smiles": self.molecule.smiles, "seconds": self.seconds}


def recorded_instruction_set(checkpoint: Path) -> str | None:
    """The instruction set the checkpoint was trained on, as its provenance records it (project-relative)."""
    provenance = Path(checkpoint) / PROVENANCE
    return json.loads(provenance.read_text()).get("instructions") if provenance.is_file() else None


def training_pool(params: Params, instructions: Path) -> list[Molecule]:
    """The captioned molecules training learned from: the retrieval baseline's pool, as in the evaluate stage."""
    instructions = resolve_instruction_set(instructions)
    cids = {r["cid"] for r in training_rows(params, instructions) if r["task"] == "caption"}
    return read_molecules(instruction_shards(instructions), cids=cids, e3fp=params.eval.baseline.fingerprint == "e3fp")


def baseline_missing(checkpoint: Path, recorded: str | None, instructions: Path | None, given: bool) -> str:
    """Why a model is served without the retrieval baseline beside its answers, in words."""
    if given and not instructions.is_dir():
        return f"no baseline: --instructions {instructions} is not a directory"
    if instructions is None:
        return (f"no baseline: {Path(checkpoint) / PROVENANCE} records no instruction set; "
                f"give its training molecules with --instructions DIR")
    if not instructions.is_dir():
        return (f"no baseline: the instruction set the model was trained on ({recorded or instructions}) is not at "
                f"{instructions}; give it with --instructions DIR")
    return f"no baseline: {instructions} has no captioned training molecules"


def readable(smiles: str) -> bool:
    with rdBase.BlockLogs():
        return Chem.MolFromSmiles(smiles) is not None


class Asker:
    def __init__(self, checkpoint: Path, params: Params, instructions: Path | None = None):
        self.params, self.limits = params, params.serve
        self.predictor = Predictor(checkpoint)
        recorded = recorded_instruction_set(checkpoint)
        self.instructions = instructions or (project_root() / recorded if recorded else None)
        pool = training_pool(params, self.instructions) if self.instructions and self.instructions.is_dir() else []
        self.baseline_missing = None if pool else baseline_missing(checkpoint, recorded, self.instructions,
                                                                   given=instructions is not None)
        cfg = params.eval.baseline
        self.index = RetrievalIndex(pool, kind=cfg.fingerprint, radius=cfg.morgan_radius,
                                    bits=cfg.morgan_bits) if pool else None
        self._turns = threading.BoundedSemaphore(self.limits.concurrency)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.waiting = 0

    def stop(self) -> None:
        self._stopping.set()

    def ask(self, question: Question) -> Answer:
        started = time.perf_counter()
        self._refuse_when_stopping()
        prompt, task = self._prompt_and_task(question)
        with self._turn():  # reading the molecule too: a burst of large molecules costs time, not cores
            molecule = self.molecule(question)
            text = self.predictor.answer(molecule, prompt, self.params, task)
        baseline, nearest = self._baseline(molecule, prompt, task)
        return Answer(text, task, molecule, baseline, nearest, round(time.perf_counter() - started, 3))

    def molecule(self, question: Question) -> MoleculeInput:
        limits = self.limits
        smiles = (question.smiles or "").strip() or None
        if smiles and len(smiles) > limits.max_smiles_chars:
            raise Refused(f"the SMILES has {len(smiles)} characters, over serve.max_smiles_chars "
                          f"({limits.max_smiles_chars})", 413)
        for name, upload in (("drawing", question.image), ("SDF", question.sdf)):
            size = len(upload.encode() if isinstance(upload, str) else upload) if upload else 0
            if size > limits.max_upload_bytes:
                raise Refused(f"the {name} has {size} bytes, over serve.max_upload_bytes ({limits.max_upload_bytes})", 413)
        if question.image is not None and smiles:
            raise Refused("give a SMILES (optionally with an SDF), or a drawing with an SDF, not a drawing and a SMILES")
        if question.image is not None and question.sdf is None:
            raise Refused("a drawing needs an SDF beside it: the model reads the 3D structure too")
        if question.image is None and not smiles:
            raise Refused("no molecule: give a SMILES, or a drawing with an SDF")
        try:
            if smiles:
                return molecule_from_smiles(smiles, self.params, question.sdf)
            return molecule_from_drawing(question.image, question.sdf, self.params)
        except FeaturizeError as exc:
            raise Refused(f"cannot read the molecule: {exc}") from None

    def _prompt_and_task(self, question: Question) -> tuple[str, str]:
        prompt = " ".join((question.prompt or "").split())
        if not prompt:
            raise Refused("the prompt is empty: ask something, e.g. \"Describe the input molecule.\"")
        if len(prompt) > self.limits.max_prompt_chars:
            raise Refused(f"the prompt has {len(prompt)} characters, over serve.max_prompt_chars "
                          f"({self.limits.max_prompt_chars})", 413)
        task = question.task or ("property_qa" if property_asked(prompt) else "caption")
        if task not in TASKS:
            raise Refused(f"task {task!r}: one of {', '.join(TASKS)}")
        return prompt, task

    @contextmanager
    def _turn(self):
        with self._lock:
            if self.waiting >= self.limits.max_waiting + self.limits.concurrency:
                raise Refused(f"busy: {self.waiting} requests are in line (serve.max_waiting); try again shortly", 503)
            self.waiting += 1
        try:
            deadline = time.monotonic() + self.limits.wait_timeout_s
            while not self._turns.acquire(timeout=TURN_POLL_S):
                self._refuse_when_stopping()
                if time.monotonic() > deadline:
                    raise Refused(f"busy: no turn within serve.wait_timeout_s ({self.limits.wait_timeout_s} s)", 503)
            try:
                self._refuse_when_stopping()
                yield
            finally:
                self._turns.release()
        finally:
            with self._lock:
                self.waiting -= 1

    def _refuse_when_stopping(self) -> None:
        if self._stopping.is_set():
            raise Refused("the server is stopping", 503)

    def _baseline(self, molecule: MoleculeInput, prompt: str, task: str) -> tuple[str | None, dict | None]:
        if self.index is None:
            return None, None
        if self.index.kind == "morgan" and not readable(molecule.smiles):
            return None, None  # an SDF's structure RDKit cannot sanitise: no Morgan fingerprint, the answer stands
        query = Molecule(cid=-1, smiles=molecule.smiles, description="",
                         e3fp=None if molecule.e3fp is None else molecule.e3fp.tolist())
        (match, similarity), = self.index.nearest([query])
        nearest = {"cid": match.cid, "smiles": match.smiles, "similarity": round(similarity, 4)}
        name = property_asked(prompt) if task == "property_qa" else None
        if task == "caption":
            return match.description, nearest
        value = (match.properties or {}).get(name) if name else None
        return (property_answer(name, value) if value is not None else None), nearest

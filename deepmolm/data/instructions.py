"""Instruction examples from a shard version: captioning and computed-property questions.

Each example refers to its molecule's drawing by shard version, part file and row (the PNG stays in
the shard; copying 250 MB of images per instruction set buys nothing) and carries the molecule's
E3FP array, so a loader needs only the two tables. Phrasings are drawn per molecule and task from a
generator seeded with (seed, cid, task): the same shard version and params give the same examples,
whatever the order in which molecules are visited.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from deepmolm import __version__
from deepmolm.config import VIEWS, ConfigError, InstructionsParams
from deepmolm.data.shards.parts import SHARD_SCHEMA, manifest_views, read_manifest, resolve_version
from deepmolm.runtime.run_log import portable_path, resolve_recorded
from deepmolm.store import versions
from deepmolm.store.files import parquet_writer, sha256_file
from deepmolm.store.versions import MANIFEST, mark_latest

SCHEMA_VERSION = 1
EXAMPLES = "examples.parquet"
# Examples per Parquet row group: what the training loader decodes to read one example
# (data.ExampleRows), whatever the size of the set. Small, because an epoch's order is random: past a
# few thousand examples almost every read decodes a group, and a group of 512 takes 0.4 ms (8,192:
# several ms; 32: a footer 20 times larger to parse).
EXAMPLES_PER_GROUP = 512
# Examples a stage holds at once when it streams a set: the builder before it writes, iter_examples.
EXAMPLES_PER_BATCH = 8192

INSTRUCTION_SCHEMA = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("cid", pa.int64(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("task", pa.string(), nullable=False),  # caption | property_qa
        pa.field("property", pa.string()),  # for property_qa: mw, logp, tpsa, complexity
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("answer_value", pa.float64()),  # the number in the response, for property_qa
        pa.field("shard_version", pa.string(), nullable=False),
        pa.field("image_part", pa.string(), nullable=False),  # the part file holding the PNG ...
        pa.field("image_row", pa.int32(), nullable=False),  # ... at this row
        pa.field("e3fp", pa.list_(pa.list_(pa.int32()))),
    ],
    metadata={"deepmolm.table": "instruction_examples", "deepmolm.schema_version": str(SCHEMA_VERSION)},
)

CAPTION_PROMPTS = (
    "Describe the input molecule.",
    "Provide a description of this molecule.",
    "What can you tell me about this molecule?",
    "Write a short description of the molecule shown.",
)


@dataclass(frozen=True)
class PropertyQuestion:
    name: str
    label: str
    unit: str  # appended to the number in the answer ("" for none)
    decimals: int

    def number(self, value: float) -> float:
        return round(float(value), self.decimals)

    def text(self, value: float) -> str:
        return f"{self.number(value):.{self.decimals}f}{self.unit}"


PROPERTIES = {
    "mw": PropertyQuestion("mw", "molecular weight", " g/mol", 2),
    "logp": PropertyQuestion("logp", "LogP (octanol-water partition coefficient)", "", 2),
    "tpsa": PropertyQuestion("tpsa", "topological polar surface area (TPSA)", " \u00c5\u00b2", 2),
    "complexity": PropertyQuestion("complexity", "complexity (Bertz)", "", 1),
}
PROPERTY_PROMPTS = (
    "What is the {label} of this molecule?",
    "Please give the {label} of the input molecule.",
    "Estimate the {label} of the molecule shown.",
    "How large is the {label} of this compound?",
)
PROPERTY_ANSWERS = (
    "The {label} is {value}.",
    "{value}",
    "It is approximately {value}.",
)


def property_asked(prompt: str) -> str | None:
    """The property a prompt asks for when it is one of the instruction set's property questions."""
    text = " ".join(prompt.split())
    for name, question in PROPERTIES.items():
        if any(text == template.format(label=question.label) for template in PROPERTY_PROMPTS):
            return name
    return None


def property_answer(name: str, value: float) -> str:
    """A property value written as the training answers write it ("The molecular weight is 46.07 g/mol.")."""
    question = PROPERTIES[name]
    return PROPERTY_ANSWERS[0].format(label=question.label, value=question.text(value))


def examples_for(row: dict, params: InstructionsParams) -> list[dict]:
    """The examples of one shard row (its `image_part`/`image_row` filled in by the caller)."""
    out = []
    description = (row["description"] or "").strip()
    if "caption" in params.tasks and description:
        rng = random.Random(f"{params.seed}:{row['cid']}:caption")
        out.append({"task": "caption", "property": None, "prompt": rng.choice(CAPTION_PROMPTS),
                    "response": description, "answer_value": None, "example_id": f"{row['cid']}-caption"})
    if "property_qa" in params.tasks:
        for name in params.properties:
            value = row["properties"][name]
            if value is None:
                continue
            question = PROPERTIES[name]
            rng = random.Random(f"{params.seed}:{row['cid']}:{name}")
            number, text = question.number(value), question.text(value)
            out.append({
                "task": "property_qa", "property": name,
                "prompt": rng.choice(PROPERTY_PROMPTS).format(label=question.label),
                "response": rng.choice(PROPERTY_ANSWERS).format(label=question.label, value=text),
                "answer_value": number, "example_id": f"{row['cid']}-{name}",
            })
    for example in out:
        example.update(cid=row["cid"], split=row["split"], e3fp=row["e3fp"])
    return out


def instruction_set_id(shard_version: str, params: InstructionsParams) -> str:
    key = {"shards": shard_version, "params": params.model_dump(mode="json"), "schema": SCHEMA_VERSION,
           "code": __version__}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def build_instructions(shards: Path, out_root: Path, params: InstructionsParams) -> dict:
    """Write `<out_root>/<dataset>/<id>/examples.parquet` and its manifest; returns the summary.
    Every shard row is accounted for: it yields examples, or is counted as skipped with a reason."""
    version_dir = resolve_version(Path(shards))
    manifest = read_manifest(version_dir)
    if missing := set(VIEWS) - manifest_views(manifest):
        raise ConfigError(f"{version_dir} carries no {' or '.join(sorted(missing))} (params.yaml featurize.views for "
                         f"{manifest['dataset']!r}): DeepMoLM's instructions read both views")
    final = Path(out_root) / manifest["dataset"] / instruction_set_id(manifest["version"], params)
    if (final / MANIFEST).is_file():
        mark_latest(final)
        return json.loads((final / MANIFEST).read_text())["summary"]
    columns = ["cid", "split", "description", "properties", "e3fp"]
    schema = pa.schema([SHARD_SCHEMA.field(c) for c in columns])
    staging = final.with_name(f".building-{final.name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    skipped, by_task, molecules, written = {"no_description_and_no_properties": 0}, {}, set(), 0
    pending: list[dict] = []
    with parquet_writer(staging / EXAMPLES, INSTRUCTION_SCHEMA) as writer:

        def flush(rows: int) -> None:
            nonlocal pending, written
            writer.write_table(pa.Table.from_pylist(pending[:rows], schema=INSTRUCTION_SCHEMA),
                               row_group_size=EXAMPLES_PER_GROUP)
            pending, written = pending[rows:], written + rows

        for part in manifest["parts"]:  # one part's rows and one batch of examples in memory
            rows = pq.read_table(version_dir / part["path"], columns=columns, schema=schema).to_pylist()
            for index, row in enumerate(rows):
                made = examples_for(row, params)
                if not made:
                    skipped["no_description_and_no_properties"] += 1
                for example in made:
                    example.update(shard_version=manifest["version"], image_part=part["path"], image_row=index)
                    key = example["task"] if example["task"] == "caption" else f"property_qa.{example['property']}"
                    by_task[key] = by_task.get(key, 0) + 1
                    molecules.add(example["cid"])
                pending += made
            while len(pending) >= EXAMPLES_PER_BATCH:
                flush(EXAMPLES_PER_BATCH)
        if pending or not written:
            flush(len(pending))
    assert len(molecules) + sum(skipped.values()) == manifest["counts"]["accepted"]
    summary = {
        "dataset": manifest["dataset"], "shard_version": manifest["version"], "out": portable_path(final),
        "molecules": manifest["counts"]["accepted"], "molecules_with_examples": len(molecules),
        "examples": written,
        "examples_by_task": dict(sorted(by_task.items())), "skipped_molecules": skipped,
    }
    (staging / MANIFEST).write_text(json.dumps({
        "schema_version": SCHEMA_VERSION, "table": "instruction_examples", "code_version": __version__,
        # relative to the set itself, whatever directory the command ran in
        "params": params.model_dump(mode="json"), "shards": portable_path(Path(version_dir).absolute(), start=final),
        "examples": {"path": EXAMPLES, "rows": written, "sha256": sha256_file(staging / EXAMPLES)},
        "summary": summary,
    }, indent=2, sort_keys=True) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    mark_latest(final)
    return summary


def resolve_instruction_set(path: Path) -> Path:
    """An instruction set directory, or a dataset directory of sets: the one the last build produced
    or reused (LATEST), else the newest under it."""
    return versions.resolve_version(path, "instruction set (examples.parquet + manifest.json)", EXAMPLES, nested=True)


def instruction_shards(directory: Path) -> Path:
    """The shard version an instruction set's images are read from, as an absolute path. The manifest
    records it relative to the set's own directory, so it resolves from a Ray worker's working
    directory too, and two clones record the same string."""
    shards = resolve_recorded(json.loads((Path(directory) / MANIFEST).read_text())["shards"], directory)
    if not shards.is_dir():
        raise FileNotFoundError(f"the shard version of instruction set {directory} is not at {shards}")
    return shards


def read_instructions(directory: Path) -> pa.Table:
    return pq.read_table(Path(directory) / EXAMPLES, schema=INSTRUCTION_SCHEMA)


def iter_examples(directory: Path, columns: list[str], rows: int = EXAMPLES_PER_BATCH) -> Iterator[pa.RecordBatch]:
    """The set's examples (only `columns`) `rows` at a time: how a stage reads a set without holding it."""
    return pq.ParquetFile(Path(directory) / EXAMPLES).iter_batches(batch_size=rows, columns=columns)


def held_out(cid: int, fraction: float, seed: int) -> bool:
    """Whether a training-split molecule is held out from training (for tuning and held-out loss):
    a hash of (seed, cid), so the choice is stable as the set grows and never depends on row order."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"holdout:{seed}:{cid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction

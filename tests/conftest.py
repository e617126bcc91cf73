"""Shared fixtures: the repository's params with all outputs redirected into a temporary dir."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deepmolm.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DEEPMOLM_SHARED", REPO.parent / "shared")).resolve()
PARAMS = REPO / "params.yaml"


def pytest_configure(config):
    """Each pytest process (an xdist worker, or the only one) gets its own Prefect home: the temporary
    API servers the flows start keep their SQLite database there, and two workers must not share one."""
    # Prefect's temporary API server gets 20 s to start by default; two pytest workers, Ray and Dask
    # on 2 cores have taken longer (CI: "Timed out while attempting to connect to ephemeral Prefect
    # API"). The CLI subprocesses of the tests inherit this.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One intra-op thread for the models trained inside an xdist worker. Two workers share two
        # cores with the end-to-end demos' processes, and torch's OpenMP threads spin at every
        # barrier: the tiny overfit tests took 169 and 188 s in the suite against 2.4 and 10 s alone.
        # Only this process: the CLI, Ray and Dask processes the tests start keep their own settings.
        import torch

        torch.set_num_threads(1)
    if os.environ.get("PREFECT_HOME") in (None, os.environ.get("DEEPMOLM_TEST_PREFECT_HOME")):  # unset, or a parent's
        import shutil
        import tempfile

        home = tempfile.mkdtemp(prefix=f"deepmolm-prefect-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
        os.environ["PREFECT_HOME"] = os.environ["DEEPMOLM_TEST_PREFECT_HOME"] = home
        config.add_cleanup(lambda: shutil.rmtree(home, ignore_errors=True))


def pytest_addoption(parser):
    parser.addoption("--extended", action="store_true",
                     help="also run the tests marked extended (long fault-tolerance scenarios; CI leaves them out)")


def pytest_collection_modifyitems(config, items):
    # the longest file first, so an xdist worker starts on it at once (a stable sort keeps the rest in order)
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended scenario: run with `./dev test --extended`")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared() -> Path:
    data = SHARED / "data"
    assert data.is_dir(), f"the shared data directory {data} is missing (set DEEPMOLM_SHARED)"
    return data


def tmp_overrides(tmp_path: Path) -> list[str]:
    """Every output under tmp_path, and ChEBI-20's splits whole (params.yaml cuts them to the demo's size)."""
    return [*(f"paths.{name}_dir={tmp_path / name}" for name in ("raw", "cache", "shards", "reports", "instructions", "logs")),
            "sources.chebi20.max_rows_per_split=null"]


@pytest.fixture
def make_params(tmp_path: Path):
    """params.yaml of the repo, outputs under tmp_path, plus the given overrides."""

    def make(*overrides: str) -> Params:
        return load_params(PARAMS, [*tmp_overrides(tmp_path), *overrides])

    return make


def run_cli(*args: str, cwd: Path = REPO, check: bool = False) -> subprocess.CompletedProcess:
    """Run the installed `deepmolm` console script as a user would."""
    exe = Path(sys.executable).with_name("deepmolm")
    result = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"deepmolm {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def small_versions(tmp_path_factory, shared) -> tuple[Path, Path, list[str]]:
    """Two shard versions built once per session by the library, without Prefect: 10 ChEBI-20
    molecules in 2 parts, and the same plus 3 rows featurization rejects. Copy one before changing it."""
    from deepmolm.data.ingest import ingest_tsv
    from deepmolm.data.shards.build import build_version
    from tests.featurize_inputs import small_chebi20_rows, write_table

    root = tmp_path_factory.mktemp("versions")
    overrides = [*tmp_overrides(root), "featurize.rows_per_part=5"]
    params = load_params(PARAMS, overrides)
    lines = small_chebi20_rows(shared, 10)
    built = []
    for name, bad in (("valid", False), ("with-rejects", True)):
        raw = ingest_tsv(params, write_table(root / f"{name}.txt", lines, bad=bad), progress=False)
        summary, _ = build_version(raw.out, root / f"shards-{name}", params)
        built.append(Path(summary.out))
    return built[0], built[1], overrides


@pytest.fixture(scope="session")
def instruction_set(small_versions, tmp_path_factory):
    """Instruction examples of the first small version (its rows have no split)."""
    from deepmolm.data.instructions import build_instructions

    root = tmp_path_factory.mktemp("instructions")
    params = load_params(PARAMS, [*small_versions[2], *tmp_overrides(root)])
    return Path(build_instructions(small_versions[0], root / "out", params.instructions)["out"])


@pytest.fixture(scope="session")
def split_set(instruction_set, tmp_path_factory) -> tuple[Path, set[int]]:
    """A copy of the shared instruction set with the upper half of its molecules (by CID) held out as test."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepmolm.data.instructions import EXAMPLES, instruction_shards, read_instructions
    from deepmolm.runtime.run_log import portable_path
    from deepmolm.store.versions import MANIFEST

    copy = tmp_path_factory.mktemp("split_set") / instruction_set.name
    shutil.copytree(instruction_set, copy)
    manifest = json.loads((copy / MANIFEST).read_text())  # the set points at its shards relative to itself
    manifest["shards"] = portable_path(instruction_shards(instruction_set), start=copy)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    table = read_instructions(copy)
    cids = sorted(set(table.column("cid").to_pylist()))
    held = set(cids[len(cids) // 2:])
    splits = pa.array(["test" if c in held else "validation" for c in table.column("cid").to_pylist()], pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("split"), "split", splits), copy / EXAMPLES)
    return copy, held


@pytest.fixture(scope="session")
def drawings64(small_versions, tmp_path_factory):
    """The first small version's drawing store at the tiny preset's 64 px."""
    from deepmolm.models.deepmolm.drawing_store import build_drawings

    return build_drawings(small_versions[0], 64, tmp_path_factory.mktemp("drawings"))


@pytest.fixture(scope="session")
def tokenizer_dir(instruction_set, tmp_path_factory):
    """A byte-level BPE of 400 tokens trained on the instruction set."""
    from deepmolm.data.instructions import read_instructions
    from deepmolm.models.deepmolm.tokenizer import train_bpe

    rows = read_instructions(instruction_set).to_pylist()
    trained = train_bpe([text for r in rows for text in (r["prompt"], r["response"])], 400)
    directory = tmp_path_factory.mktemp("tokenizer")
    trained.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from deepmolm.models.deepmolm.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_dir)


def split_copy(instruction_set: Path, root: Path, split: str) -> Path:
    """A copy of an instruction set under root, every row in `split`, its shards still found."""
    import json
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from deepmolm.data.instructions import EXAMPLES, instruction_shards, read_instructions
    from deepmolm.runtime.run_log import portable_path
    from deepmolm.store.versions import MANIFEST

    copy = root / instruction_set.name
    shutil.copytree(instruction_set, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["shards"] = portable_path(instruction_shards(instruction_set), start=copy)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    table = read_instructions(copy)
    column = pa.array([split] * len(table), pa.string())
    pq.write_table(table.set_column(table.schema.get_field_index("split"), "split", column), copy / EXAMPLES)
    return copy


def copy_repository(dest: Path, *, rows_per_split: int) -> Path:
    """The repository's files as a fresh clone has them (tracked and untracked-but-not-ignored), in
    dest/main with dest/shared beside it, ChEBI-20 cut to `rows_per_split`, and a git repository."""
    import shutil

    copy = dest / "main"
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, copy / name)
    (dest / "shared").symlink_to(SHARED)
    params = copy / "params.yaml"
    text, count = re.subn(r"max_rows_per_split: \d+", f"max_rows_per_split: {rows_per_split}", params.read_text())
    assert count == 1, "params.yaml sets sources.chebi20.max_rows_per_split"
    params.write_text(text)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    return copy


def newcomer_env(**extra: str) -> dict[str, str]:
    """`./dev` on the test's own environment as it is (an install from a copy would re-point the
    editable package there), with a newcomer's PATH that does not have the environment on it."""
    venv = Path(sys.prefix)
    path = ":".join(p for p in os.environ["PATH"].split(":") if not p.startswith(str(venv)))
    # no Prefect server or home of the test process: a newcomer's demo keeps its runs in the project's .prefect/
    env = {key: value for key, value in os.environ.items()
           if key not in ("PREFECT_API_URL", "PREFECT_HOME", "DEEPMOLM_TEST_PREFECT_HOME")}
    return {**env, "DEEPMOLM_VENV": str(venv), "DEEPMOLM_NO_INSTALL": "1", "PATH": path, **extra}

"""The layout rule of docs/ARCHITECTURE.md, checked from the code: imports run down the layers, no
cycles between siblings, and the library builds a shard version without Prefect."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import REPO


def test_imports_run_one_way_through_the_layers_without_cycles():
    """import-linter's contracts in pyproject.toml (the same check as `lint-imports`): the layers, and
    no import cycle between sibling packages or modules at any depth."""
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout


def test_the_library_builds_a_shard_version_without_prefect(tmp_path, shared):
    """build_version in a fresh interpreter in which `import prefect` fails."""
    from tests.conftest import tmp_overrides
    from tests.featurize_inputs import small_chebi20_rows, write_table

    table = write_table(tmp_path / "rows.txt", small_chebi20_rows(shared, 4), bad=False)
    overrides = [*tmp_overrides(tmp_path), "featurize.rows_per_part=2"]
    script = textwrap.dedent(f"""
        import sys
        sys.modules["prefect"] = None  # any import of prefect now raises ImportError
        from deepmolm.config import load_params
        from deepmolm.data.ingest import ingest_tsv
        from deepmolm.data.shards.build import build_version
        params = load_params({str(REPO / "params.yaml")!r}, {overrides!r})
        raw = ingest_tsv(params, {str(table)!r}, progress=False)
        summary, sfp = build_version(raw.out, params.paths.shards_dir, params)
        print(summary.accepted, summary.rejected, summary.parts, sfp and sfp["graphs"])
        assert not any(name.startswith("prefect") and sys.modules[name] is not None for name in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    accepted, rejected, parts, graphs = result.stdout.split()[-4:]
    assert (int(accepted), int(rejected), int(parts)) == (4, 0, 2)


def test_every_test_that_steps_an_optimizer_in_its_own_process_is_in_the_numerics_matrix():
    """A test that trains in the pytest process and asserts what was learned holds only if its margin
    survives another processor's last bits: the `learns` mark puts it in `python -m benchmarks.test_matrix`
    (1 and 2 threads x each ATen capability). Found from the source: an optimizer step or the
    number head's refit in the test's body."""
    import ast

    trains = re.compile(r"\b(optimi[sz]er\.step\(\)|refit_number_head\()")
    unmarked = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_marks = ast.unparse(next((node.value for node in tree.body if isinstance(node, ast.Assign)
                                         and any(getattr(t, "id", "") == "pytestmark" for t in node.targets)), ast.List([])))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and trains.search(ast.unparse(node)):
                marks = module_marks + " ".join(ast.unparse(d) for d in node.decorator_list)
                if "pytest.mark.learns" not in marks and "pytest.mark.slow" not in marks:
                    unmarked.append(f"{path.relative_to(REPO)}::{node.name}")
    assert not unmarked, f"mark these @pytest.mark.learns (and run benchmarks/test_matrix.py): {unmarked}"
    assert len(list((REPO / "tests").rglob("test_*.py"))) > 20

"""The layout rule of docs/ARCHITECTURE.md, checked from the code: imports run down the layers, no
cycles between siblings, and the library builds a shard version without Prefect."""

from __future__ import annotations

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

"""The layout rule of docs/ARCHITECTURE.md, checked from the code: imports run down the layers, no
cycles between the packages of a layer, and the library builds a shard version without Prefect."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import grimp

from tests.conftest import REPO


def test_imports_run_one_way_through_the_layers():
    """import-linter's layers contract in pyproject.toml (the same check as `lint-imports`)."""
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_import_cycles_between_sibling_packages():
    graph = grimp.build_graph("deepmolm", "flows")
    packages = sorted(m for m in graph.modules if (REPO / m.replace(".", "/") / "__init__.py").is_file())
    for parent in packages:
        children = sorted(m for m in graph.find_children(parent) if m in packages)
        if len(children) < 2:
            continue
        edges: dict[str, set[str]] = defaultdict(set)
        for a in children:
            for b in children:
                if a != b and graph.chain_exists(importer=a, imported=b, as_packages=True):
                    edges[a].add(b)
        assert _cycle(edges) is None, f"packages under {parent} import each other: {' -> '.join(_cycle(edges))}"


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

"""What a dataset refresh may record in dvc.lock: the refreshed sources' dvc.yaml stages, unless the
run's overrides change one of their params.

dvc.lock records each output beside the params.yaml values it was made with; outputs made under
other values would make it lie, so such a refresh commits nothing and says which params differ.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from deepmolm.config import changed_by_overrides

# the dvc.yaml stages of one source, in order; a source without them is refreshed but not committed
SOURCE_STAGES = ("ingest", "featurize", "validate")


def commit_plan(project: Path, params_file: Path | str, overrides: list[str], sources: list[str]) -> tuple[list[str], str | None]:
    """(the sources' stages dvc.yaml declares, in pipeline order; why they must not be committed, or None)."""
    declared = (yaml.safe_load((Path(project) / "dvc.yaml").read_text()) or {}).get("stages", {})
    stages = [f"{step}_{source}" for source in sources for step in SOURCE_STAGES if f"{step}_{source}" in declared]
    keys = []
    for stage in stages:
        for entry in declared[stage].get("params", []):
            # a key of params.yaml, or {other_file: [keys]}: only params.yaml is the refresh's
            keys += [entry] if isinstance(entry, str) else list(entry.get("params.yaml", []))
    changed = changed_by_overrides(params_file, overrides, keys)
    if not changed:
        return stages, None
    return stages, (f"not committed to dvc.lock: the overrides ({'; '.join(overrides)}) change {', '.join(changed)}, "
                    f"params of {', '.join(stages)}, so params.yaml does not describe these outputs; put the values in "
                    f"params.yaml (or run `dvc exp run -S ...`) to record such a refresh")

"""Records what the end-to-end demo writes: `python -m tests.e2e_outputs` runs `./dev demo` at the
end-to-end test's size on a copy of the repository in a temporary directory, on this machine's own
code paths, and writes every output's md5 from its dvc.lock to tests/e2e_outputs.json. The test then
runs the demo elsewhere, in another processor's environment, and must find the same bytes. Run it
after a change that means to change an output (as `dvc repro` is run for the committed dvc.lock);
about 5 minutes on 2 cores."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.test_end_to_end import RECORDED, outputs, run_demo


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="deepmolm-e2e-") as tmp:
        recorded = outputs(run_demo(Path(tmp)).project)
    before = json.loads(RECORDED.read_text()) if RECORDED.is_file() else {}
    RECORDED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    changed = sorted(key for key in before.keys() | recorded.keys() if before.get(key) != recorded.get(key))
    print(f"{RECORDED}: {len(recorded)} outputs, {len(changed)} changed" + "".join(f"\n  {key}" for key in changed))


if __name__ == "__main__":
    main()

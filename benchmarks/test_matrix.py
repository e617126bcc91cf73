"""The tests that train in their own process (`-m learns`) under every way one machine imitates
another: 1 and 2 threads x ATEN_CPU_CAPABILITY default, avx2 and avx512. A verdict that changes
across the matrix is a test whose margin rests on the processor's last bits, not on its mechanism.

(Training on Ray Train is pinned by params.yaml `numerics` in its workers, whatever the outer
environment: those tests are not in the matrix. tests/test_layout.py checks that every test which
steps an optimizer in its own process carries the `learns` mark, so a new one lands in this matrix.)

    python -m benchmarks.test_matrix [pytest args, e.g. -k number_head]
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time

THREADS = (1, 2)
CAPABILITIES = ("default", "avx2", "avx512")


def run(threads: int, capability: str, extra: list[str]) -> tuple[dict[str, str], float]:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTEST_XDIST_WORKER", "MKL_CBWR")}
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), ATEN_CPU_CAPABILITY=capability)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "pytest", "-m", "learns", "-p", "no:cacheprovider", "-p", "no:xdist",
                             "-rA", "-q", *extra], env=env, capture_output=True, text=True, check=False)
    verdicts = {test: outcome for outcome, test in re.findall(r"^(PASSED|FAILED|ERROR) (\S+)", result.stdout, flags=re.MULTILINE)}
    if not verdicts:
        raise SystemExit(f"no verdicts (threads {threads}, {capability}):\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return verdicts, time.perf_counter() - started


def main() -> None:
    extra = sys.argv[1:]
    settings = list(itertools.product(THREADS, CAPABILITIES))
    table: dict[str, dict[tuple[int, str], str]] = {}
    for threads, capability in settings:
        verdicts, seconds = run(threads, capability, extra)
        for test, verdict in verdicts.items():
            table.setdefault(test, {})[(threads, capability)] = verdict
        failed = sum(v != "PASSED" for v in verdicts.values())
        print(f"threads={threads} ATEN_CPU_CAPABILITY={capability:<8} {len(verdicts)} tests, {failed} failed, {seconds:.0f} s",
              flush=True)
    header = " | ".join(f"{t}t {c}" for t, c in settings)
    print(f"\n| test | {header} |\n|---|{'---|' * len(settings)}")
    for test, row in sorted(table.items()):
        cells = " | ".join("pass" if row.get(s) == "PASSED" else (row.get(s) or "-").lower() for s in settings)
        print(f"| {test.split('::', 1)[1]} | {cells} |")
    broken = [test for test, row in table.items() if any(row.get(s) != "PASSED" for s in settings)]
    print(f"\n{len(table)} tests x {len(settings)} settings: " + ("all pass" if not broken else f"{len(broken)} fragile"))
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()

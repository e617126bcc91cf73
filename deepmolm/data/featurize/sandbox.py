"""A hard per-molecule time limit: featurization runs in a helper process that can be killed.

RDKit's own embedding timeout is checked only between steps (a 236-atom glycan ran 9.5 s under a
5 s timeout), and MMFF has none, so a limit that must hold is enforced from outside. The helper is a
plain subprocess (Dask worker processes are daemonic and may not fork multiprocessing children),
started once per process and reused. It runs the whole `featurize_row`, which also keeps the
pure-Python steps (E3FP, SELFIES) away from the GIL of a Dask worker, whose own threads slowed them
by a third. When the limit passes, the helper is killed, the molecule is featurized here without a
conformer (`conformer_source = none`, note `time_limit`), and the next molecule starts a new helper.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from deepmolm.config import FeaturizeParams
from deepmolm.data.featurize.conformer import Conformer
from deepmolm.data.featurize.record import FeaturizeRejection, StepTimer, featurize_row

TIMED_OUT = "time_limit"


class FeaturizeSandbox:
    """Calls featurize_row in a helper process, giving up its conformer after `time_limit_s`."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def __call__(
        self, row: dict[str, Any], params: FeaturizeParams, timer: StepTimer | None = None
    ) -> dict[str, Any] | FeaturizeRejection:
        timer = timer if timer is not None else StepTimer()
        with self._lock:
            reply, problem = self._ask(row, params)
        if reply is not None:
            outcome, seconds = reply
            timer.seconds.update(seconds)
            return outcome
        gave_up = Conformer("none", None, problem)
        return featurize_row(row, params, conformer_fn=lambda *_: gave_up, timer=timer)

    def _ask(self, row: dict[str, Any], params: FeaturizeParams) -> tuple[tuple | None, str]:
        self.start()
        started = time.perf_counter()
        try:
            self._to_child.send((row, params))
            if self._from_child.poll(params.time_limit_s):
                return self._from_child.recv(), ""
        except (EOFError, OSError) as exc:
            self.stop()
            return None, f"featurization helper died ({type(exc).__name__})"
        self.stop()
        waited = time.perf_counter() - started
        return None, f"{TIMED_OUT}: not done within {params.time_limit_s:g} s ({waited:.1f} s)"

    def start(self) -> None:
        """Start the helper if it is not running; returns at once, the helper imports in the background."""
        if self._process is not None and self._process.poll() is None:
            return
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "deepmolm.data.featurize.sandbox", str(to_child_r), str(from_child_w)],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._to_child = Connection(to_child_w, readable=False)
        self._from_child = Connection(from_child_r, writable=False)
        self.restarts += 1

    def stop(self) -> None:
        if self._process is None:
            return
        for conn in (self._to_child, self._from_child):
            conn.close()
        self._process.kill()
        self._process.wait()
        self._process = None


_SHARED: dict[int, FeaturizeSandbox] = {}


def shared_sandbox() -> FeaturizeSandbox:
    """One sandbox per process (a forked child gets its own, never its parent's pipes)."""
    pid = os.getpid()
    if pid not in _SHARED:
        _SHARED[pid] = sandbox = FeaturizeSandbox()
        atexit.register(sandbox.stop)
    return _SHARED[pid]


def _serve(read_fd: int, write_fd: int) -> None:
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    while True:
        try:
            row, params = requests.recv()
        except EOFError:  # the parent is gone or closed the pipe
            return
        timer = StepTimer()
        outcome = featurize_row(row, params, timer=timer)
        replies.send((outcome, dict(timer.seconds)))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))

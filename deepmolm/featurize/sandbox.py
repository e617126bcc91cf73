"""A hard time limit for conformer generation: the work runs in a helper process that can be killed.

RDKit's own embedding timeout is checked only between steps (a 236-atom glycan ran 9.5 s under a
5 s timeout), and MMFF has none, so a limit that must hold is enforced from outside. The helper is a
plain subprocess (Dask worker processes are daemonic and may not fork multiprocessing children),
started once per process and reused; on a timeout it is killed and the next molecule starts a new one.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

import numpy as np
from rdkit import Chem

from deepmolm.config import ConformerParams
from deepmolm.featurize.conformer import Conformer, make_conformer

TIMED_OUT = "time_limit"


class ConformerSandbox:
    """Calls make_conformer in a helper process, giving up after `time_limit_s` seconds."""

    def __init__(self) -> None:
        self._process: subprocess.Popen | None = None
        self._to_child: Connection | None = None
        self._from_child: Connection | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def __call__(
        self, mol: Chem.Mol, params: ConformerParams, pubchem_coords: np.ndarray | None = None
    ) -> Conformer:
        if pubchem_coords is not None or params.method == "none":
            return make_conformer(mol, params, pubchem_coords)  # no embedding: nothing to time out
        with self._lock:
            self._ensure_started()
            started = time.perf_counter()
            try:
                self._to_child.send((mol, params))
                if self._from_child.poll(params.time_limit_s):
                    source, result, detail = self._from_child.recv()
                    return Conformer(source, result, detail)
            except (EOFError, OSError) as exc:
                self.stop()
                return Conformer("none", None, f"conformer helper died ({type(exc).__name__})")
            self.stop()
            waited = time.perf_counter() - started
            return Conformer("none", None, f"{TIMED_OUT}: no conformer within {params.time_limit_s:g} s ({waited:.1f} s)")

    def _ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "deepmolm.featurize.sandbox", str(to_child_r), str(from_child_w)],
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


_SHARED: dict[int, ConformerSandbox] = {}


def shared_sandbox() -> ConformerSandbox:
    """One sandbox per process (a forked child gets its own, never its parent's pipes)."""
    pid = os.getpid()
    if pid not in _SHARED:
        _SHARED[pid] = sandbox = ConformerSandbox()
        atexit.register(sandbox.stop)
    return _SHARED[pid]


def _serve(read_fd: int, write_fd: int) -> None:
    requests, replies = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    while True:
        try:
            mol, params = requests.recv()
        except EOFError:  # the parent is gone or closed the pipe
            return
        conformer = make_conformer(mol, params)
        replies.send((conformer.source, conformer.mol, conformer.detail))


if __name__ == "__main__":
    _serve(int(sys.argv[1]), int(sys.argv[2]))

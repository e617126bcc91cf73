"""The floating-point code paths of a process that trains or evaluates, pinned (params.yaml `numerics`).

torch's CPU libraries choose code by the processor they run on: oneMKL its GEMM kernels, block sizes
and threading (its vendor and cache sizes), oneDNN its convolutions, ATen the instruction set of its
vectorised kernels. The same training then gives other last bits on an Intel Xeon than on an AMD
EPYC, and hundreds of optimizer steps make every weight differ. Each library reads its setting once,
before its first use, so the settings go into the environment where a process starts (a Ray job's
runtime_env for the workers, `pin` before anything is computed in the evaluation's process), and the
process checks what it got (`check`) before it trains.
"""

from __future__ import annotations

import os
import platform
from typing import Protocol


class NumericsError(RuntimeError):
    """A process whose code paths are not the ones params.yaml `numerics` asks for."""


class Numerics(Protocol):
    worker_threads: int
    evaluation_threads: int
    aten_cpu_capability: str | None
    mkl_cbwr: str | None
    onednn: bool


def environment(numerics: Numerics, threads: int) -> dict[str, str]:
    """The variables a new process needs, before it imports torch, for these code paths. OpenMP's and
    oneMKL's dynamic thread counts off: oneMKL's reproducibility holds for a fixed number of threads."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_DYNAMIC": "FALSE", "MKL_DYNAMIC": "FALSE"}
    if numerics.aten_cpu_capability is not None and _x86_64():
        env["ATEN_CPU_CAPABILITY"] = numerics.aten_cpu_capability
    if numerics.mkl_cbwr is not None:
        env["MKL_CBWR"] = numerics.mkl_cbwr
    return env


def ray_runtime_env(numerics: Numerics) -> dict:
    """The runtime_env of a Ray job whose workers train: every worker process starts with the pin."""
    return {"env_vars": environment(numerics, numerics.worker_threads)}


def pin(numerics: Numerics, threads: int) -> None:
    """This process onto the code paths, for a process that starts before the params are read (the
    evaluation's CLI): only valid before torch has computed anything, which `check` verifies."""
    os.environ.update(environment(numerics, threads))
    check(numerics, threads)


def check(numerics: Numerics, threads: int) -> None:
    """Set what torch sets at run time (threads, oneDNN) and raise NumericsError if a setting that is
    read once was read before the environment had it (ATen's capability, oneMKL's branch). oneMKL
    runs none of its Intel branches on another vendor's processor: there it reads AUTO (still with
    fixed cache sizes and static scheduling), which is accepted for a named branch."""
    import torch

    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = numerics.onednn
    got = applied()
    wrong = []
    if numerics.aten_cpu_capability not in (None, got["aten_cpu_capability"]) and _x86_64():
        wrong.append(f"ATen's capability is {got['aten_cpu_capability']!r}, not {numerics.aten_cpu_capability!r}")
    if numerics.mkl_cbwr is not None and got["mkl_cbwr"] is not None and not _same_branch(numerics.mkl_cbwr, got["mkl_cbwr"]):
        wrong.append(f"oneMKL's branch is {got['mkl_cbwr']!r}, not {numerics.mkl_cbwr!r}")
    if wrong:
        raise NumericsError(f"this process already computed with other code paths ({'; '.join(wrong)}): params.yaml "
                            f"numerics must be in its environment before it starts (numerics.environment)")


def applied() -> dict[str, object]:
    """The code paths this process uses now (the run log records them beside each run)."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability().lower()
    return {"aten_cpu_capability": "default" if capability == "no avx" else capability,
            "mkl_cbwr": _mkl_branch(), "threads": torch.get_num_threads(),
            "onednn": bool(torch.backends.mkldnn.enabled)}


def _x86_64() -> bool:
    """ATen's capabilities named in the params (default, avx2, avx512) are x86-64's; on another
    architecture (aarch64) ATen keeps its own choice, and the bits are that architecture's."""
    return platform.machine().lower() in ("x86_64", "amd64")


# oneMKL's named constants for its CNR branches (mkl_service.h), and the flag of its strict mode; the
# names (but OFF) are what MKL_CBWR takes, so params.yaml's numerics.mkl_cbwr is checked against them
MKL_BRANCHES = {1: "OFF", 2: "AUTO", 3: "COMPATIBLE", 4: "SSE2", 6: "SSSE3", 7: "SSE4_1", 8: "SSE4_2", 9: "AVX",
                 10: "AVX2", 12: "AVX512", 14: "AVX512_E1"}
_MKL_STRICT = 0x10000


def _same_branch(wanted: str, got: str) -> bool:
    wanted_branch, *wanted_flags = wanted.upper().replace("BRANCH=", "").split(",")
    got_branch, *got_flags = got.split(",")
    named = wanted_branch not in ("AUTO", "COMPATIBLE", "OFF")
    return wanted_flags == got_flags and (got_branch == wanted_branch or (named and got_branch == "AUTO"))


def _mkl_branch() -> str | None:
    """oneMKL's branch as oneMKL itself reports it ("COMPATIBLE,STRICT", "AUTO", "OFF"): a branch it
    does not run on this processor reads as another (AVX2 on an AMD EPYC reads AUTO). None: a torch
    without oneMKL. torch links oneMKL statically and exports its service layer's `cbwr_get`, not
    the public `mkl_cbwr_get`; asking it initialises oneMKL from the environment as a first GEMM would."""
    import ctypes

    import torch

    try:
        library = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        get = library.mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    setting = get(-1) & 0xFFFFFFFF  # MKL_CBWR_ALL: the branch and the strict flag
    branch = MKL_BRANCHES.get(setting & 0xFFFF, str(setting & 0xFFFF))
    return f"{branch},STRICT" if setting & _MKL_STRICT else branch

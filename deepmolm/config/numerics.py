"""The numerics section: which floating-point code paths the processes that train and evaluate take."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from deepmolm.config.base import _Section
from deepmolm.runtime.numerics import MKL_BRANCHES


class NumericsParams(_Section):
    worker_threads: int = Field(ge=1, description="torch's (OpenMP's, oneMKL's) threads in each Ray worker that trains: "
                                                  "ATen splits some sums by thread")
    evaluation_threads: int = Field(ge=1, description="the same in the evaluation's process")
    aten_cpu_capability: Literal["default", "avx2", "avx512"] | None = Field(
        description="ATEN_CPU_CAPABILITY: the instruction set of ATen's vectorised kernels (and of torch.randn); "
                    "null: the processor's widest. x86-64 only: another architecture keeps ATen's own choice")
    mkl_cbwr: str | None = Field(
        description="MKL_CBWR: oneMKL's code branch for its GEMMs, with fixed cache sizes and static scheduling "
                    "(AVX2; COMPATIBLE, SSE2, is the one branch oneMKL also runs on AMD processors; STRICT: the "
                    "same bits for any thread count); null: oneMKL's own dispatch")
    onednn: bool = Field(description="torch.backends.mkldnn.enabled: oneDNN's convolutions, which pick kernels and "
                                     "blocking by the processor; false: ATen's own, through oneMKL")

    @field_validator("mkl_cbwr")
    @classmethod
    def _known_branch(cls, value: str | None) -> str | None:
        if value is None:
            return value
        branch, *flags = value.upper().removeprefix("BRANCH=").split(",")
        names = [name for name in MKL_BRANCHES.values() if name != "OFF"]
        if branch not in names or any(flag != "STRICT" for flag in flags):
            raise ValueError(f"{value!r} is not a oneMKL branch: one of {', '.join(names)}, optionally followed by ',STRICT'")
        return value

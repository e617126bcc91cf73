"""params.yaml `numerics` where a process starts: the code paths it names are the ones a training
worker and the evaluation compute with, whatever environment they inherit, and a process that
computed before it was pinned says so instead of training on other paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from deepmolm.config import load_params
from deepmolm.runtime import numerics
from tests.conftest import PARAMS, REPO

# what a processor of another kind would have the libraries choose by themselves
ANOTHER_PROCESSOR = {"ATEN_CPU_CAPABILITY": "default", "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "2"}


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_the_environment_names_each_library_and_a_fixed_thread_count():
    pinned = load_params(PARAMS, ["numerics.aten_cpu_capability=avx2", "numerics.mkl_cbwr=AVX2,STRICT"]).numerics
    env = numerics.environment(pinned, 3)
    assert env["ATEN_CPU_CAPABILITY"] == "avx2" and env["MKL_CBWR"] == "AVX2,STRICT"
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3" and env["MKL_DYNAMIC"] == env["OMP_DYNAMIC"] == "FALSE"
    free = load_params(PARAMS, ["numerics.aten_cpu_capability=null", "numerics.mkl_cbwr=null"]).numerics
    assert "ATEN_CPU_CAPABILITY" not in numerics.environment(free, 1) and "MKL_CBWR" not in numerics.environment(free, 1)
    assert numerics.ray_runtime_env(pinned) == {"env_vars": numerics.environment(pinned, pinned.worker_threads)}


@pytest.mark.parametrize("override,fragment", [("numerics.aten_cpu_capability=avx1024", "aten_cpu_capability"),
                                               ("numerics.worker_threads=0", "worker_threads"),
                                               ("numerics.mkl_cbwr=AVX3,STRICT", "mkl_cbwr"),
                                               ("numerics.mkl_cbwr=AVX2,LOOSE", "not a oneMKL branch")])
def test_a_bad_numerics_value_is_an_error_naming_the_key(override, fragment):
    from deepmolm.config import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        load_params(PARAMS, [override])


def test_pinned_in_another_processors_environment_the_process_computes_on_the_pinned_paths():
    """The evaluation's way: `pin` before anything is computed; the same step's bits as in a process
    that inherited nothing, and oneMKL's and ATen's own report of what they run."""
    code = """
        import hashlib, json, torch
        from deepmolm.config import load_params
        from deepmolm.runtime import numerics
        pinned = load_params("params.yaml", ["numerics.mkl_cbwr=COMPATIBLE,STRICT"]).numerics
        numerics.pin(pinned, 1)
        torch.manual_seed(0)
        a, b = torch.randn(96, 333), torch.randn(333, 65)
        layer = torch.nn.functional.layer_norm((a @ b).softmax(-1), (65,))
        print(json.dumps({**numerics.applied(), "bits": hashlib.sha256(layer.numpy().tobytes()).hexdigest()}))
        """
    plain, other = (json.loads(python(code, **env).stdout.splitlines()[-1]) for env in ({}, ANOTHER_PROCESSOR))
    assert plain == other, "the outer environment leaks into a pinned process"
    assert plain["aten_cpu_capability"] == "avx2" and plain["mkl_cbwr"] == "COMPATIBLE,STRICT"
    assert plain["threads"] == 1 and plain["onednn"] is False
    unpinned = python(code.replace("numerics.pin(pinned, 1)", "torch.set_num_threads(1)"), **ANOTHER_PROCESSOR)
    assert json.loads(unpinned.stdout.splitlines()[-1])["bits"] != plain["bits"], \
        "without the pin that environment changes the bits (else this test could not fail)"


def test_a_process_that_computed_before_the_pin_is_refused_with_the_setting_named():
    done = python("""
        import torch
        from deepmolm.config import load_params
        from deepmolm.runtime import numerics
        torch.ones(3).sum()  # ATen chose its kernels: too late to choose others
        numerics.pin(load_params("params.yaml", ["numerics.aten_cpu_capability=default"]).numerics, 1)
        """, ATEN_CPU_CAPABILITY="avx2")
    assert done.returncode != 0
    assert "NumericsError" in done.stderr and "ATen's capability is 'avx2', not 'default'" in done.stderr


@pytest.mark.slow
def test_a_ray_worker_starts_on_the_pinned_paths_whatever_its_driver_inherited(tmp_path):
    """A local Ray head on loopback, started as `deepmolm train run` starts it (training/driver.py
    connect), in another processor's environment: its task reports the pinned paths."""
    done = python(f"""
        import json
        from deepmolm.config import load_params
        from deepmolm.training.driver import map_on_ray

        def report():
            from deepmolm.config import load_params
            from deepmolm.runtime import numerics
            params = load_params("{PARAMS}")
            numerics.check(params.numerics, params.numerics.worker_threads)
            return numerics.applied()

        params = load_params("{PARAMS}", ["train.runs_dir={tmp_path}", "train.ray_dashboard=false"])
        applied = map_on_ray(params, report, [()])[0]
        import psutil
        heads = [p.name() for p in psutil.Process().children(recursive=True) if p.name().startswith("ray-dashboard-")]
        print(json.dumps({{**applied, "dashboard_heads": heads}}))
        """, **ANOTHER_PROCESSOR, RAY_ENABLE_UV_RUN_RUNTIME_ENV="0")
    assert done.returncode == 0, done.stderr[-3000:]
    applied = json.loads(done.stdout.splitlines()[-1])
    assert applied["dashboard_heads"] == [], "train.ray_dashboard=false: a local Ray without its dashboard's modules"
    pinned = load_params(PARAMS).numerics
    assert applied["aten_cpu_capability"] == pinned.aten_cpu_capability
    assert applied["threads"] == pinned.worker_threads and applied["onednn"] is pinned.onednn
    assert applied["mkl_cbwr"].split(",")[-1] == "STRICT" and applied["mkl_cbwr"] != "COMPATIBLE", \
        "params.yaml's branch (AVX2; AUTO where oneMKL runs no Intel branch), not the inherited COMPATIBLE"

"""Dask worker preload (`--preload flows.dask_worker_setup`): start the featurization helper
process as the worker starts, so that the helper's imports run beside the worker's own start-up
instead of delaying its first part. The local cluster of the featurize flow loads it; a worker of
an external cluster works without it and starts its helper with the first molecule."""

from __future__ import annotations

from deepmolm.data.featurize.sandbox import shared_sandbox


def dask_setup(worker) -> None:  # noqa: ARG001 - Dask's preload hook signature
    shared_sandbox().start()

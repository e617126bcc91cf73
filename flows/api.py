"""The Prefect API a flow and its Dask workers report to.

With PREFECT_API_URL set (a `prefect server start` or Prefect Cloud) that one is used. Otherwise a
temporary local server is started here and its address exported, so the worker processes of a
local Dask cluster record their task runs in the same place instead of each starting their own.
A flow run on that server sends no heartbeats: they exist so that a server can tell a crashed run
from a long one, and this server ends with the run; Prefect's heartbeat thread, waking once a
second, also held every flow's end by up to a second while it was joined.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


@contextmanager
def prefect_api() -> Iterator[str]:
    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    # imported here: the server package costs 1.5 s, and every Dask worker that unpickles a task of
    # flows/ would pay it for nothing
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield server.api_url
            finally:
                # send the run's logs while the server is still up, a failed run's too: left to the
                # exit, they were sent to a stopped server, retried, and held the exit 90 s
                APILogWorker.drain_all(timeout=10)
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


def quiet_dask_logs() -> None:
    """The nannies' INFO lines (worker start and stop, ...) drown the progress bar; keep warnings.
    The nannies of a local cluster run in this process; LocalCluster already quiets the workers."""
    logging.getLogger("distributed").setLevel(logging.WARNING)

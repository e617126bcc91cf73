"""The Prefect API of a run: a temporary server of the command's own sends no flow-run heartbeats, and
records a failed run's logs before it stops."""

from __future__ import annotations

import sqlite3
import uuid

import pytest
from prefect import flow, get_run_logger
from prefect.flow_engine import FlowRunEngine
from prefect.settings import (
    PREFECT_API_DATABASE_CONNECTION_URL,
    PREFECT_API_URL,
    PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
    temporary_settings,
)

from flows.api import prefect_api


@flow
def quick_flow() -> int:
    return 1


def test_a_flow_on_the_temporary_server_sends_no_heartbeat(monkeypatch):
    if PREFECT_API_URL.value():
        pytest.skip("a configured Prefect API: no temporary server is started")
    sent = []
    emit = FlowRunEngine._emit_flow_run_heartbeat
    monkeypatch.setattr(FlowRunEngine, "_emit_flow_run_heartbeat",
                        lambda self, *args: (sent.append(self.flow_run.id), emit(self, *args))[-1])
    with prefect_api():
        assert quick_flow() == 1
        assert sent == []
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: 30}):  # what a configured server's runs get
            assert quick_flow() == 1
    assert len(sent) == 1  # the first heartbeat goes out as the run starts


@flow
def failing_flow(marker: str) -> None:
    get_run_logger().warning(marker)
    raise RuntimeError("the run fails")


def test_a_failed_runs_logs_are_on_the_temporary_server_before_it_stops():
    """Left to the process's exit, they went to a stopped server, were retried, and held a failed
    command's exit for 90 s."""
    if PREFECT_API_URL.value():
        pytest.skip("a configured Prefect API: no temporary server is started")
    marker = f"the run's last words {uuid.uuid4()}"
    with pytest.raises(RuntimeError, match="the run fails"):
        with prefect_api():
            failing_flow(marker)
    database = PREFECT_API_DATABASE_CONNECTION_URL.value().split(":///", 1)[1]
    with sqlite3.connect(database) as db:
        logged = db.execute("SELECT count(*) FROM log WHERE message = ?", (marker,)).fetchone()[0]
    assert logged == 1

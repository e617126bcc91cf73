"""The Prefect API of a run: a temporary server of the command's own sends no flow-run heartbeats."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.flow_engine import FlowRunEngine
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

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

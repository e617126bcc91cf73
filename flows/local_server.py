"""A real local Prefect server for the length of one command: `python -m flows.local_server CMD ...`.

`dvc repro` runs one Prefect flow per stage; without a server each would start and stop a temporary
API of its own (about 10 s apiece here) and its runs would vanish with it. Under one server they
share its database in PREFECT_HOME (default `.prefect/` of the project), so after the command
`PREFECT_HOME=.prefect prefect server start` shows every run. With PREFECT_API_URL already set, the
command simply runs against that server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def local_prefect_server(home: Path, *, port: int | None = None, start_timeout_s: float = 120) -> Iterator[str]:
    """Start `prefect server start` on loopback, yield its API URL once healthy, stop it after."""
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).with_name("prefect")
    log_path = home / "server.log"
    with open(log_path, "ab") as log:
        server = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _healthy(url):
            if server.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the Prefect server did not come up on {url} (log {log_path}):\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m flows.local_server COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if os.environ.get("PREFECT_API_URL"):
        return subprocess.call(argv)
    home = Path(os.environ.get("PREFECT_HOME") or ".prefect")
    with local_prefect_server(home) as url:
        print(f"Prefect server for this run: {url.removesuffix('/api')} (database in {home.resolve()})", file=sys.stderr)
        return subprocess.call(argv, env={**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(home.resolve())})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

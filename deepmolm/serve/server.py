"""`deepmolm serve`: load once, bind, and run the app under uvicorn until interrupted.

The socket is bound first, so a port that is taken fails at once, before the model loads, and
`--port 0` can say which port it got.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

from deepmolm.config import Params


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def build_server_app(params: Params, checkpoint: Path, shards: Path | None, instructions: Path | None):
    """The FastAPI app with the page mounted; what `serve` runs and the benchmark times."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no requests to the outside
    import gradio as gr

    from deepmolm.serve.app import create_app
    from deepmolm.serve.asking import Asker
    from deepmolm.serve.browse import ShardBrowser
    from deepmolm.serve.page import THEME, build_page

    limits = params.serve
    asker = Asker(checkpoint, params, instructions)
    browser = ShardBrowser(shards, limits.page_size, limits.max_query_chars) if shards else None
    page = build_page(asker, browser, params.report.thumbnail_px)
    page.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_waiting)
    return gr.mount_gradio_app(create_app(asker, browser, params), page, path="/", theme=THEME,
                               max_file_size=limits.max_upload_bytes, footer_links=[], ssr_mode=False), asker, browser


def serve(params: Params, sock: socket.socket, checkpoint: Path, shards: Path | None, instructions: Path | None,
          announce) -> None:
    import uvicorn

    app, asker, browser = build_server_app(params, checkpoint, shards, instructions)
    host, port = sock.getsockname()[:2]
    announce({"url": f"http://{host}:{port}/", "checkpoint": str(checkpoint),
              "shards": browser.version.name if browser else None,
              "baseline_pool": len(asker.index) if asker.index else 0})
    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])

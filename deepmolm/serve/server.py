"""`deepmolm serve`: load once, bind, and run the app under uvicorn until interrupted.

The socket is bound first, so a port that is taken fails at once, before the model loads, and
`--port 0` can say which port it got.

Ctrl-C and SIGTERM are taken by one thread with sigwait and blocked in every other, before any
other thread exists. RDKit puts its own SIGINT handler in place while it embeds a conformer or
matches a substructure, and a Ctrl-C that arrives then cancels that call and goes no further: with
requests in flight, the server never heard it. A blocked signal runs no handler at all, so
whichever library holds the handler, the signal reaches the thread that stops the server.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import uvicorn

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


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def hold_stop_signals() -> None:
    """Block Ctrl-C and SIGTERM in this thread and every thread started after it (they inherit the
    mask); call it first. `serve` takes them with sigwait."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def build_server_app(params: Params, checkpoint: Path, shards: Path | None, instructions: Path | None):
    """The FastAPI app with the page mounted, its bodies capped; what `serve` runs and the benchmark times."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no requests to the outside
    import gradio as gr

    from deepmolm.serve.app import create_app, largest_body
    from deepmolm.serve.asking import Asker
    from deepmolm.serve.bodies import BodyCap
    from deepmolm.serve.browse import ShardBrowser
    from deepmolm.serve.page import THEME, build_page

    limits = params.serve
    asker = Asker(checkpoint, params, instructions)
    browser = ShardBrowser(shards, limits.page_size, limits.max_query_chars) if shards else None
    page = build_page(asker, browser, params.report.thumbnail_px)
    page.queue(default_concurrency_limit=limits.concurrency, max_size=limits.max_waiting)
    app = gr.mount_gradio_app(create_app(asker, browser, params), page, path="/", theme=THEME,
                              max_file_size=limits.max_upload_bytes, footer_links=[], ssr_mode=False)
    capped = BodyCap(app, largest_body(params), f"what two uploads of serve.max_upload_bytes ({limits.max_upload_bytes}) take")
    return capped, asker, browser


def serve(params: Params, sock: socket.socket, checkpoint: Path, shards: Path | None, instructions: Path | None,
          announce) -> int | None:
    """Run until a stop signal; returns its number (None if the server ended otherwise)."""
    app, asker, browser = build_server_app(params, checkpoint, shards, instructions)
    host, port = sock.getsockname()[:2]
    announce({"url": f"http://{host}:{port}/", "checkpoint": str(checkpoint),
              "shards": browser.version.name if browser else None,
              "baseline_pool": len(asker.index) if asker.index else 0, "baseline_missing": asker.baseline_missing})
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=params.serve.shutdown_grace_s)
    server, received = uvicorn.Server(config), []
    threading.Thread(target=_relay_stop_signals, args=(server, asker.stop, received), daemon=True,
                     name="stop-signals").start()
    server.run(sockets=[sock])
    # uvicorn raises the signal it stopped on again as it returns; still blocked, it stays pending
    # and is dropped at exit, and the caller exits as that signal would have (Ctrl-C: 130)
    return received[0] if received else None


def _relay_stop_signals(server: uvicorn.Server, stop_answering: Callable[[], None], received: list[int]) -> None:
    """The model's queue stops first (the requests in line would each be answered before the process
    could end), then uvicorn: gracefully on the first signal, at once on a second Ctrl-C. uvicorn's
    own handlers stay installed but never run while the signals are blocked."""
    while True:
        number = signal.sigwait(STOP_SIGNALS)
        received.append(number)
        stop_answering()
        server.handle_exit(number, None)

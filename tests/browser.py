"""Headless Chromium for the tests that open a page (Debian's chromium; `./dev setup` installs it)."""

from __future__ import annotations

import shutil
import subprocess


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise AssertionError("headless Chromium is needed for the page tests: `./dev setup` installs Debian's chromium")


def headless(*args: str) -> subprocess.CompletedProcess:
    # --no-sandbox: CI and containers run as root; --virtual-time-budget lets the page's load handler run
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=10000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)

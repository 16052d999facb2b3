"""A real headless browser for the HTML report's tests: Debian's chromium, found or installed.

    exe = chromium()          # path, or pytest.skip with the reason it cannot be had
    screenshot(exe, "report.html", "shot.png", width=1280, height=2400)
    dom = dump_dom(exe, "report.html")      # the DOM after the page's scripts ran

Flags: no sandbox (CI runs as root), no GPU, and nothing that reaches the network (no QUIC, no
background networking, component updates or sync), a fresh profile each run.
"""
import os
import shutil
import subprocess
import tempfile

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]


def _find():
    return next((p for p in map(shutil.which, NAMES) if p), None)


def chromium() -> str:
    """The browser's path; installs Debian's chromium with apt-get when it is missing and this
    process may (root, apt-get present); skips, saying why, only when that cannot be done."""
    exe = _find()
    if exe:
        return exe
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("no chromium, and apt-get as root is not available to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    log = []
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        log.append(r.stdout[-1500:] + r.stderr[-1500:])
    exe = _find()
    if not exe:
        pytest.skip("chromium could not be installed with apt-get: " + " | ".join(log)[-800:])
    return exe


def _run(exe: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="replay-chromium-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def screenshot(exe: str, page: str, png: str, width: int = 1280, height: int = 2400) -> str:
    r = _run(exe, [f"--window-size={width},{height}", f"--screenshot={os.path.abspath(png)}",
                   "file://" + os.path.abspath(page)])
    assert os.path.exists(png), f"chromium wrote no screenshot: {r.stderr[-2000:]}"
    return png


def dump_dom(exe: str, page: str) -> str:
    r = _run(exe, ["--dump-dom", "file://" + os.path.abspath(page)])
    assert r.returncode == 0 and "<html" in r.stdout, r.stderr[-2000:]
    return r.stdout

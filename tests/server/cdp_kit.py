"""Headless chromium driven over the DevTools protocol, for pages that change as they
run (the live viewer): ``--remote-debugging-pipe`` speaks CDP over two pipes (JSON
messages ended by a NUL byte), so no websocket library is needed.

::

    with Browser(CHROMIUM, tmp_path) as browser:
        browser.open(url)
        browser.wait_for("document.querySelector('.done') !== null")
        png = browser.screenshot()
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import struct
import subprocess
import time
import zlib
from pathlib import Path
from typing import Any

from .serve_kit import GUARD

__all__ = ["Browser", "png_colours"]


def _high(fd: int) -> int:
    """``fd`` moved to a number above 9, clear of the 3 and 4 chromium's pipes take."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Browser:
    """One headless chromium and one page in it, driven from the test's thread."""

    def __init__(self, exe: str, tmp_path: Path, size: tuple[int, int] = (1200, 1400)) -> None:
        to_chrome, self._send = map(_high, os.pipe())
        self._recv, from_chrome = map(_high, os.pipe())
        # chromium reads commands on fd 3 and writes answers on fd 4: a shell puts the
        # pipes there (no preexec_fn, which is unsafe while the server's thread runs).
        script = f'exec "$0" "$@" 3<&{to_chrome} 4>&{from_chrome} {to_chrome}<&- {from_chrome}>&-'
        args = [
            "--headless",
            "--no-sandbox",  # the suite may run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--remote-debugging-pipe",
            f"--window-size={size[0]},{size[1]}",
            f"--user-data-dir={tmp_path / 'chromium-cdp'}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            ["bash", "-c", script, exe, *args],
            pass_fds=(to_chrome, from_chrome),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next = 0
        self.session = ""

    def call(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        """Send one CDP command (to the page's session unless ``session`` is false) and
        return its result; events in between are dropped."""
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        while True:
            answer = self._read()
            if answer.get("id") == self._next:
                if "error" in answer:
                    raise AssertionError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer.get("result", {})
                return result

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + GUARD
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._recv], [], [], max(left, 0))
            assert ready, "chromium did not answer"
            chunk = os.read(self._recv, 1 << 20)
            assert chunk, "chromium closed its pipe"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        found: dict[str, Any] = json.loads(message)
        return found

    def open(self, url: str) -> None:
        """A new page at ``url``, which later calls drive."""
        target = self.call("Target.createTarget", session=False, url="about:blank")
        attached = self.call(
            "Target.attachToTarget", session=False, targetId=target["targetId"], flatten=True
        )
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript ``expression`` in the page."""
        found = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return found.get("result", {}).get("value")

    def wait_for(self, expression: str) -> None:
        """Return once ``expression`` is true in the page (a hang guard, not a timing)."""
        deadline = time.monotonic() + GUARD
        while not self.evaluate(expression):
            assert time.monotonic() < deadline, f"the page never showed {expression}"
            time.sleep(0.02)

    def screenshot(self, selector: str | None = None) -> bytes:
        """The page as PNG, or only the element ``selector`` finds."""
        params: dict[str, Any] = {"format": "png"}
        if selector is not None:
            box = self.evaluate(
                f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                ".getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()"
            )
            params["clip"] = dict(zip(("x", "y", "width", "height"), box, strict=True), scale=1)
        return base64.b64decode(self.call("Page.captureScreenshot", **params)["data"])

    def close(self) -> None:
        """Close chromium and wait for it."""
        try:
            self.call("Browser.close", session=False)
        except AssertionError:
            pass  # it may close its pipe before answering
        finally:
            os.close(self._send)
            os.close(self._recv)
            try:
                self.proc.wait(GUARD)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(GUARD)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def png_colours(png: bytes) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit, non-interlaced RGB/RGBA PNG (what
    chromium writes), decoded here so the test needs no imaging library."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (size,), kind = struct.unpack(">I", png[pos : pos + 4]), png[pos + 4 : pos + 8]
        data = png[pos + 8 : pos + 8 + size]
        header = data if kind == b"IHDR" else header
        idat += data if kind == b"IDAT" else b""
        pos += 12 + size
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and ctype in (2, 6) and interlace == 0
    bpp = 3 if ctype == 2 else 4
    raw, stride = zlib.decompress(idat), width * bpp
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        ftype, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[i] = (line[i] + pred) & 255
        colours.update(bytes(line[x : x + 3]) for x in range(0, stride, bpp))
        prev = line
    return {(c[0], c[1], c[2]) for c in colours}

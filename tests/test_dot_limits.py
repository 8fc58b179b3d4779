"""Bounded reads: a graph file is read up to a limit, never to the end of an endless source."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import engine.loader
from engine import run as cli
from engine.errors import GraphFileError
from engine.loader import MAX_BYTES, clear_cache, load_graph, read_dot

T = TypeVar("T")
GRAPH = b"digraph { start [shape=Mdiamond]; done [shape=Msquare]; start -> done }\n"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_dev_zero_is_refused_after_the_limit() -> None:
    """``/dev/zero`` never ends: it is refused, naming the file, once past MAX_BYTES."""
    with pytest.raises(GraphFileError) as info:
        load_graph("/dev/zero")
    assert info.value.path == "/dev/zero"
    assert str(info.value) == f"/dev/zero: error: larger than {MAX_BYTES // 2**20} MiB: not read"


def test_a_file_over_the_limit_is_refused_and_one_at_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is exact: ``limit`` bytes are read, ``limit + 1`` are refused."""
    monkeypatch.setattr(engine.loader, "MAX_BYTES", len(GRAPH))
    path = tmp_path / "g.dot"
    path.write_bytes(GRAPH)
    assert load_graph(path).start == "start"
    path.write_bytes(GRAPH + b" ")
    with pytest.raises(GraphFileError, match=f"larger than {len(GRAPH)} bytes"):
        load_graph(path)


def _endless_writer(fifo: Path, stop: threading.Event) -> None:
    try:
        with open(fifo, "wb") as f:
            f.write(b"digraph { ")
            while not stop.is_set():
                f.write(b"a -> b; " * 1024)
    except BrokenPipeError:
        pass  # the reader gave up, as it should


def _once_written(read: Callable[[], T]) -> T:
    """``read()`` of a FIFO once its writer has opened its end (until then it reads empty)."""
    while True:
        try:
            return read()
        except GraphFileError as exc:
            if exc.reason != "empty file":
                raise


def _fed(fifo: Path, data: bytes) -> int:
    """``data`` waiting in ``fifo`` with a writer present, so a reader opening it now reads
    ``data`` (never an empty pipe), then waits for the end: the returned descriptor, which
    :func:`_end_once_read` closes.  Linux opens a FIFO read-write without blocking."""
    fd = os.open(fifo, os.O_RDWR)
    os.write(fd, data)
    return fd


def _end_once_read(fifo: Path, fd: int) -> threading.Thread:
    """Close ``fd`` once another descriptor of this process has ``fifo`` open (the
    reader's, which keeps the data alive), so the reader gets its end of file."""

    def close_when_opened() -> None:
        inode = fifo.stat().st_ino
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for name in os.listdir("/proc/self/fd"):
                with contextlib.suppress(OSError):
                    if int(name) != fd and os.stat(f"/proc/self/fd/{name}").st_ino == inode:
                        os.close(fd)
                        return
            time.sleep(0.001)
        os.close(fd)  # the reader never came: it reads to the end of what was written

    closer = threading.Thread(target=close_when_opened, daemon=True)
    closer.start()
    return closer


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_an_endless_fifo_is_refused_after_the_limit(tmp_path: Path) -> None:
    """A FIFO whose writer never stops costs at most ``limit + 1`` bytes, then an error."""
    fifo = tmp_path / "endless.dot"
    os.mkfifo(fifo)
    stop = threading.Event()
    writer = threading.Thread(target=_endless_writer, args=(fifo, stop), daemon=True)
    writer.start()
    try:
        with pytest.raises(GraphFileError, match="larger than 65536 bytes") as info:
            _once_written(lambda: read_dot(str(fifo), limit=65536))
        assert info.value.path == str(fifo)
    finally:
        stop.set()
        writer.join(timeout=30)
    assert not writer.is_alive()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_nobody_writes_to_is_empty_not_a_hang(tmp_path: Path) -> None:
    """Opening a FIFO without a writer would block forever; it reads as an empty file."""
    fifo = tmp_path / "silent.dot"
    os.mkfifo(fifo)
    with pytest.raises(GraphFileError, match="empty file"):
        load_graph(fifo)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux FIFOs and /proc")
def test_a_pipe_is_read_again_each_time(tmp_path: Path) -> None:
    """A pipe's stat says nothing about its next contents: each load reads it anew.

    The data is in the pipe before each load opens it (a writer thread racing the load's
    open could find it already gone, its data lost, and the load retrying forever)."""
    fifo = tmp_path / "pipe.dot"
    os.mkfifo(fifo)
    names = []
    for label in ("one", "two"):
        fd = _fed(fifo, GRAPH.replace(b"digraph", b"digraph " + label.encode()))
        closer = _end_once_read(fifo, fd)
        names.append(load_graph(fifo).name)
        closer.join(timeout=30)
    assert names == ["one", "two"]


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_the_cli_refuses_dev_zero_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """``validate /dev/zero`` is one line on stderr and exit 2, not a hang or a traceback."""
    assert cli.main(["validate", "/dev/zero"]) == 2
    assert capsys.readouterr().out.strip().splitlines() == [
        f"/dev/zero: error: larger than {MAX_BYTES // 2**20} MiB: not read"
    ]

"""engine.logs: library warnings reach structlog when configured, else stderr; never stdout."""

from __future__ import annotations

import logging

import pytest
import structlog
from structlog.testing import capture_logs

from engine.logs import log


def test_unconfigured_structlog_goes_to_stdlib_not_stdout(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    structlog.reset_defaults()
    with caplog.at_level(logging.WARNING, logger="turngraph"):
        log("warning", "heartbeat.failed", session_id="s1", failures=3)
        log("debug", "quiet")
    assert capsys.readouterr().out == ""
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "heartbeat.failed session_id='s1' failures=3"


def test_configured_structlog_receives_structured_fields() -> None:
    with capture_logs() as logs:  # capture_logs configures structlog for its duration
        log("error", "turn.interrupted", session_id="s1", turn=4)
    assert logs == [
        {"event": "turn.interrupted", "session_id": "s1", "turn": 4, "log_level": "error"}
    ]
    structlog.reset_defaults()

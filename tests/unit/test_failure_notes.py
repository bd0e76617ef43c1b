"""FailureNotes: a run of failures is logged where it starts and where it ends, the rest at DEBUG."""

from __future__ import annotations

import logging

import pytest

from mcp_server.engine.failure_notes import FailureNotes


def test_a_run_of_failures_is_said_once_when_it_starts_and_once_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("tests.failure_notes")
    caplog.set_level(logging.DEBUG, logger=log.name)
    notes = FailureNotes(log, "claiming tasks")
    notes.worked()  # nothing failed: nothing to say
    for attempt in range(5):
        notes.failed(f"refused {attempt}")
    notes.worked()
    notes.worked()
    notes.failed("refused again")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings[0] == "claiming tasks fails: refused 0 (said again only when it works again)"
    assert warnings[1].startswith("claiming tasks works again, after 5 failure(s) over ")
    assert warnings[2].startswith("claiming tasks fails: refused again")
    assert len(warnings) == 3
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 4

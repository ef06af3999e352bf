"""Suite-wide checks."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test during which rawchat logged an error: those are bugs, whatever the input."""
    caplog.set_level(logging.WARNING, logger="rawchat")
    yield
    errors = [
        r
        for r in caplog.get_records("call")
        if r.name.startswith("rawchat") and r.levelno >= logging.ERROR
    ]
    assert not errors, "rawchat logged errors:\n" + "\n".join(r.getMessage() for r in errors)

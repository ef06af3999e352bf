"""Suite-wide checks."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterator

import pytest

#: Loggers whose errors are bugs: rawchat's own, and asyncio's, which is where an
#: exception in a callback, a timer or a task ends up (the loop's exception handler
#: logs it there, uvloop's included) instead of reaching the test.
WATCHED = ("rawchat", "asyncio")


@pytest.fixture(autouse=True, scope="session")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Whatever rawchat a test starts without --data keeps its history here, not in
    the user's ~/.local/share (tests/processes.py passes --data none besides)."""
    before = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if before is None:
        del os.environ["XDG_DATA_HOME"]
    else:
        os.environ["XDG_DATA_HOME"] = before


@pytest.fixture(autouse=True)
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail any test during which rawchat or the event loop logged an error.

    Those are bugs, whatever the input: a test that provokes one on purpose says so
    with ``allowed_errors``.
    """
    for name in WATCHED:
        caplog.set_level(logging.WARNING, logger=name)
    yield
    # A task that failed and was never awaited is reported when it is freed, and a
    # failed task is often part of a reference cycle (its exception's traceback):
    # collect now, so that the report lands in this test and not in a later one.
    gc.collect()
    errors = [
        r
        for r in [*caplog.get_records("call"), *caplog.records]
        if r.name.split(".")[0] in WATCHED and r.levelno >= logging.ERROR
    ]
    assert not errors, "errors were logged:\n" + "\n".join(
        f"{r.name}: {r.getMessage()}" + (f"\n{r.exc_text or ''}" if r.exc_info else "")
        for r in errors
    )

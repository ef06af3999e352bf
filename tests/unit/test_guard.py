"""The suite's guard (tests/conftest.py) fails a test in which anything logged an error.

Run on small test files of its own, in a pytest of their own, so that what fails there is
the guard's verdict and not this suite's.
"""

from __future__ import annotations

from pathlib import Path

import pytest

GUARD = Path(__file__).parents[1] / "conftest.py"

CASES = """
import asyncio
import logging

import uvloop


def test_a_callback_that_raises():
    async def main():
        asyncio.get_running_loop().call_soon(lambda: 1 / 0)
        await asyncio.sleep(0.01)

    asyncio.run(main())


def test_a_timer_that_raises_on_uvloop():
    async def main():
        asyncio.get_running_loop().call_later(0.001, lambda: 1 / 0)
        await asyncio.sleep(0.05)

    uvloop.run(main())


def test_a_task_whose_failure_nobody_reads():
    async def fails():
        raise ValueError("lost")

    async def main():
        asyncio.get_running_loop().create_task(fails())
        await asyncio.sleep(0.01)

    asyncio.run(main())


def test_rawchat_logs_an_error():
    logging.getLogger("rawchat.connection").error("a bug")


def test_rawchat_warns():
    logging.getLogger("rawchat.connection").warning("a client misbehaved")


def test_a_quiet_loop():
    asyncio.run(asyncio.sleep(0))
"""


def test_the_guard_fails_every_test_that_logged_an_error(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(GUARD.read_text())
    pytester.makepyfile(test_cases=CASES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rE")
    # Each test passes its own call; the guard's verdict is an error at its teardown.
    result.assert_outcomes(passed=6, errors=4)
    summary = "ERROR test_cases.py::"
    failed = {
        line.removeprefix(summary).split(" ")[0]
        for line in result.outlines
        if line.startswith(summary)
    }
    assert failed == {
        "test_a_callback_that_raises",
        "test_a_timer_that_raises_on_uvloop",
        "test_a_task_whose_failure_nobody_reads",
        "test_rawchat_logs_an_error",
    }
    assert "ZeroDivisionError" in result.stdout.str()
    assert "ValueError: lost" in result.stdout.str()

"""rawchat raises its open-files limit at start, so that the host's allowance is its capacity."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from rawchat.config import FD_RESERVE, Config, raise_open_files_limit


@pytest.fixture
def low_soft_limit() -> Iterator[tuple[int, int]]:
    """The soft limit lowered to 256 under the process's own hard limit, put back after."""
    original = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = original[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        yield 256, hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, original)


def test_the_soft_limit_is_raised_to_the_hard_one(low_soft_limit: tuple[int, int]) -> None:
    soft, hard = low_soft_limit
    assert Config().max_connections == soft - FD_RESERVE
    before, now, reported_hard = raise_open_files_limit()
    assert (before, reported_hard) == (soft, hard)
    assert now > soft
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (now, hard)
    if hard != resource.RLIM_INFINITY:
        assert now == hard
    assert Config().max_connections == now - FD_RESERVE, "the default cap follows"


def test_a_soft_limit_already_at_the_hard_one_is_left_alone(
    low_soft_limit: tuple[int, int],
) -> None:
    raise_open_files_limit()
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert raise_open_files_limit() == (soft, soft, low_soft_limit[1])

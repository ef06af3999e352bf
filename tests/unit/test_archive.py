"""A room's history with the store behind it: memory's window, then the store, seamlessly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rawchat import replies
from rawchat.archive import Archive
from rawchat.history import History
from rawchat.retention import Retention
from rawchat.store import Store

#: Ids with gaps (a restart, a forgotten room): pages must not assume contiguous ids.
IDS = [*range(1, 21), *range(4100, 4120), 9000]


def stored_history(path: Path, retention: Retention, window: int = 7) -> History:
    """IDS through a history keeping ``window`` in memory, every one committed to the store."""
    history = History(
        "lobby",
        max_count=window,
        max_bytes=1 << 20,
        encode=replies.encode_msg,
        archive=Archive(Store(path, retention)),
    )
    for id in IDS:
        history.append(id, float(id), "ann", f"m{id}", None)
    assert isinstance(history.archive, Archive)
    history.archive.close()  # everything written; reads go on through a fresh store
    history.archive = Archive(Store(path, retention))
    return history


def ids_of(page: list[str]) -> list[int]:
    return [json.loads(text)["id"] for text in page]


@pytest.mark.parametrize("limit, max_bytes", [(5, 1 << 16), (100, 1 << 16), (50, 1)])
def test_paging_back_crosses_from_memory_to_the_store_once_each(
    tmp_path: Path, limit: int, max_bytes: int
) -> None:
    history = stored_history(tmp_path, Retention())
    assert len(history) == 7
    seen: list[int] = []
    page, more = history.page(None, limit, max_bytes)
    seen = ids_of(page)
    while more:
        page, more = history.page(seen[0], limit, max_bytes)
        assert page, "a page with more before it is never empty"
        seen = ids_of(page) + seen
    assert seen == IDS


def test_a_resume_from_anywhere_kept_is_exact_or_the_newest_page_never_truncated(
    tmp_path: Path,
) -> None:
    history = stored_history(tmp_path, Retention())
    for after in [0, *IDS]:
        page, more, truncated = history.since(after, limit=10)
        missed = [id for id in IDS if id > after]
        assert not truncated, after
        if len(missed) <= 10:
            assert (ids_of(page), more) == (missed, False), after
        else:
            assert (ids_of(page), more) == (IDS[-10:], True), after


def test_what_retention_dropped_from_the_store_is_reported_truncated(tmp_path: Path) -> None:
    history = stored_history(tmp_path, Retention(count=30))
    # The store kept the newest 30 of the 41: ids 1..11 are gone.
    assert history.since(10, limit=100)[2] is True
    page, more, truncated = history.since(11, limit=100)
    assert (ids_of(page), more, truncated) == ([id for id in IDS if id > 11], False, False)
    assert history.since(None, limit=100)[2] is True

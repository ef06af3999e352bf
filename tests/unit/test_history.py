"""A room's history: bounded by count and bytes, searched by id (ids may jump), read in pages."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from rawchat import replies
from rawchat.history import History, Ledger


def filled(ids: list[int], kept: int, max_bytes: int = 1 << 20) -> History:
    history = History("r", max_count=kept, max_bytes=max_bytes, encode=replies.encode_msg)
    for id in ids:
        history.append(id, 0.0, "n", str(id), None)
    return history


def ids_of(page: list[str]) -> list[int]:
    return [json.loads(text)["id"] for text in page]


@given(
    kept=st.integers(min_value=0, max_value=20),
    steps=st.lists(st.integers(min_value=1, max_value=5), max_size=60),
    after=st.one_of(st.none(), st.integers(min_value=0, max_value=400)),
)
def test_resume_by_id_never_gaps_or_duplicates_even_when_ids_jump(
    kept: int, steps: list[int], after: int | None
) -> None:
    ids = [sum(steps[: i + 1]) for i in range(len(steps))]
    history = filled(ids, kept)
    page, more, truncated = history.since(after, limit=1000, max_bytes=1 << 20)
    got = ids_of(page)
    assert got == sorted(set(got)), "strictly increasing, no duplicates"
    if not truncated and after is not None:
        assert got == [id for id in ids if id > after] and not more
    elif not truncated:
        assert got == ids
    else:
        assert got == ids[len(ids) - min(kept, len(ids)) :]


def test_pages_walk_back_through_everything_once() -> None:
    history = filled(list(range(1, 301, 3)), 1000)
    seen: list[int] = []
    page, more = history.page(None, 7)
    seen = ids_of(page) + seen
    while more:
        page, more = history.page(seen[0], 7)
        seen = ids_of(page) + seen
    assert seen == list(range(1, 301, 3))


def test_bytes_bound_a_room_and_all_rooms_together() -> None:
    one = filled(list(range(1, 200)), 1000, max_bytes=4000)
    assert one.bytes <= 4000 and one.dropped_through > 0
    ledger = Ledger(20_000)
    rooms = [
        History(
            f"r{i}", max_count=1000, max_bytes=1 << 20, encode=replies.encode_msg, ledger=ledger
        )
        for i in range(3)
    ]
    for id in range(1, 400):
        rooms[id % 3].append(id, 0.0, "n", "x" * 100, None)
    assert ledger.total == sum(h.bytes for h in rooms) <= 20_000


def test_a_deleted_message_is_gone_from_every_read_and_frees_its_bytes() -> None:
    ledger = Ledger(1 << 20)
    history = History(
        "r", max_count=10, max_bytes=1 << 20, encode=replies.encode_msg, ledger=ledger
    )
    for id in (1, 2, 3, 4):
        history.append(id, 0.0, "n", f"text {id}", None)
    before = history.bytes
    assert history.delete(3) and not history.delete(3) and not history.delete(9)
    assert history.bytes < before and ledger.total == history.bytes
    assert ids_of(history.page()[0]) == [1, 2, 4]
    assert ids_of(history.page(before=4)[0]) == [1, 2]
    # A client that saw 2 gets 4, and is not told anything is missing.
    assert history.since(2) == ([history.page()[0][-1]], False, False)
    assert ids_of(history.after(2) or []) == [4]


def test_messages_older_than_max_age_are_dropped_and_a_resume_from_before_is_truncated() -> None:
    now = [1000.0]
    history = History(
        "r",
        max_count=100,
        max_bytes=1 << 20,
        encode=replies.encode_msg,
        max_age=60,
        clock=lambda: now[0],
    )
    for id, ts in ((1, 900.0), (2, 950.0), (3, 990.0)):
        history.append(id, ts, "n", str(id), None)
    assert ids_of(history.page()[0]) == [2, 3], "id 1 was already past its age"
    now[0] = 1015.0
    page, more, truncated = history.since(1)
    assert (ids_of(page), more, truncated) == ([3], False, True)
    assert ids_of(history.since(2)[0]) == [3] and not history.since(2)[2]

"""rawchat.limits without sockets: bucket arithmetic, bounded tables, origins."""

from __future__ import annotations

import pytest

from rawchat.limits import Occupancy, PerAddress, TokenBucket, origin_allowed

# -- TokenBucket -----------------------------------------------------------------------------


def test_a_bucket_starts_full_and_spends_one_token_per_message() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_a_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    for _ in range(3):
        assert bucket.take(0.0)
    assert not bucket.take(0.25), "half a token is not enough"
    assert bucket.take(0.5), "a refused take does not lose what has accrued"
    assert not bucket.take(0.5)
    assert bucket.take(1.0)
    assert not bucket.take(1.0)


def test_a_bucket_saves_up_at_most_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=3, now=0.0)
    assert bucket.take(0.0)
    # A long silence earns 1000 tokens; only 3 are kept.
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]


def test_full_says_when_a_bucket_has_nothing_to_remember() -> None:
    bucket = TokenBucket(rate=1.0, burst=2, now=0.0)
    assert bucket.full(0.0)
    assert bucket.take(0.0)
    assert not bucket.full(0.0)
    assert not bucket.full(0.5)
    assert bucket.full(1.0)


def test_a_burst_of_zero_still_lets_one_message_through() -> None:
    bucket = TokenBucket(rate=1.0, burst=0, now=0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.5)
    assert bucket.take(1.5)


# -- PerAddress ------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_past_its_burst_an_address_waits_for_turns_at_its_rate() -> None:
    clock = Clock()
    limiter = PerAddress(rate=2.0, burst=2, clock=clock)
    waits = [limiter.reserve("192.0.2.1", most=5.0) for _ in range(5)]
    assert waits == [0.0, 0.0, 0.5, 1.0, 1.5], "one turn every 1/rate seconds, in order"
    assert limiter.reserve("192.0.2.2", most=5.0) == 0.0, "another address is not held back"
    clock.now = 1.5  # the turns handed out so far have come
    assert limiter.reserve("192.0.2.1", most=5.0) == 0.5


def test_a_turn_further_away_than_most_is_refused_and_takes_nothing() -> None:
    clock = Clock()
    limiter = PerAddress(rate=2.0, burst=1, clock=clock)
    waits = [limiter.reserve("192.0.2.1", most=2.0) for _ in range(5)]
    assert waits == [0.0, 0.5, 1.0, 1.5, 2.0], "four wait, at most `most` seconds"
    for _ in range(100):  # a churner hammering a full queue does not lengthen it
        assert limiter.reserve("192.0.2.1", most=2.0) == 2.5
    clock.now = 0.5
    assert limiter.reserve("192.0.2.1", most=2.0) == 2.0, "a turn came: the queue has room"


def test_a_handshake_rate_of_zero_means_no_limit() -> None:
    limiter = PerAddress(rate=0.0, burst=0, clock=Clock())
    assert all(limiter.reserve("192.0.2.1", most=0.0) == 0.0 for _ in range(1000))
    assert not limiter._buckets, "and remembers nothing"


def test_a_scan_across_many_addresses_keeps_the_table_bounded() -> None:
    clock = Clock()
    limiter = PerAddress(rate=1.0, burst=5, clock=clock, size=64)
    for i in range(10_000):
        clock.now = i * 0.001
        assert limiter.reserve(f"10.0.{i // 256}.{i % 256}", most=5.0) == 0.0
        assert len(limiter._buckets) <= 64


def test_a_sweep_drops_refilled_buckets_first_and_keeps_busy_ones() -> None:
    clock = Clock()
    limiter = PerAddress(rate=1.0, burst=2, clock=clock, size=3)
    assert limiter.reserve("192.0.2.1", most=0.0) == 0.0  # refilled by t=1: nothing to remember
    clock.now = 1.0
    assert limiter.reserve("192.0.2.2", most=0.0) == 0.0
    assert limiter.reserve("192.0.2.2", most=0.0) == 0.0
    assert limiter.reserve("192.0.2.2", most=0.0) > 0.0  # busy: empty at t=1
    assert limiter.reserve("192.0.2.3", most=0.0) == 0.0
    limiter.reserve("192.0.2.4", most=0.0)  # the table is full: a sweep
    assert "192.0.2.1" not in limiter._buckets
    assert "192.0.2.2" in limiter._buckets
    assert limiter.reserve("192.0.2.2", most=0.0) > 0.0, "a sweep does not refill the busy one"


# -- Occupancy -------------------------------------------------------------------------------


def test_occupancy_refuses_past_the_total_with_503_and_per_address_with_429() -> None:
    occupancy = Occupancy(total=3, per_address=2)
    for address in ("192.0.2.1", "192.0.2.1"):
        assert occupancy.refusal(address) is None
        occupancy.enter(address)
    assert occupancy.refusal("192.0.2.1") == 429
    assert occupancy.refusal("192.0.2.2") is None
    occupancy.enter("192.0.2.2")
    assert occupancy.refusal("192.0.2.3") == 503
    assert occupancy.refusal("192.0.2.1") == 503, "full beats per-address"
    assert occupancy.total == 3


def test_occupancy_frees_slots_and_forgets_empty_addresses() -> None:
    occupancy = Occupancy(total=2, per_address=1)
    occupancy.enter("192.0.2.1")
    occupancy.enter("192.0.2.2")
    assert occupancy.refusal("192.0.2.3") == 503
    occupancy.leave("192.0.2.1")
    assert occupancy.refusal("192.0.2.1") is None
    assert occupancy.by_address == {"192.0.2.2": 1}
    occupancy.leave("192.0.2.2")
    assert occupancy.total == 0 and occupancy.by_address == {}


def test_occupancy_limits_of_zero_mean_no_limit() -> None:
    occupancy = Occupancy(total=0, per_address=0)
    for _ in range(1000):
        occupancy.enter("192.0.2.1")
    assert occupancy.refusal("192.0.2.1") is None


# -- origin_allowed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "tls"),
    [
        (None, "127.0.0.1:8080", False),  # no Origin: not a browser
        (None, None, False),
        ("http://127.0.0.1:8080", "127.0.0.1:8080", False),
        ("http://example.com", "example.com", False),
        ("http://example.com", "example.com:80", False),  # default ports filled in
        ("http://example.com:80", "example.com", False),
        ("https://example.com", "example.com", True),
        ("https://example.com", "example.com:443", True),
        ("http://Chat.Example.COM:8080", "chat.example.com:8080", False),  # hosts ignore case
        ("http://chat.example.com:8080", "CHAT.example.com:8080", False),
        ("http://[::1]:8080", "[::1]:8080", False),
        ("http://[::1]", "[::1]:80", False),
        ("https://[2001:db8::1]", "[2001:DB8::1]", True),
    ],
)
def test_the_pages_own_origin_is_allowed(origin: str | None, host: str | None, tls: bool) -> None:
    assert origin_allowed(origin, host, (), tls)


@pytest.mark.parametrize(
    ("origin", "host", "tls"),
    [
        ("http://evil.example", "127.0.0.1:8080", False),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),  # another port is another origin
        ("http://127.0.0.1", "127.0.0.1:8080", False),
        ("http://example.com", "example.com", True),  # http page, https server: 80 != 443
        ("https://example.com", "example.com", False),
        # The same host and port under the other scheme is another origin.
        ("http://example.com:443", "example.com", True),
        ("http://example.com:8443", "example.com:8443", True),
        ("https://example.com:8080", "example.com:8080", False),
        ("http://[::1]:8081", "[::1]:8080", False),
        ("http://[::2]:8080", "[::1]:8080", False),
        ("null", "127.0.0.1:8080", False),  # sandboxed frames, file:// pages
        ("file://", "127.0.0.1:8080", False),
        ("chrome-extension://abcdef", "127.0.0.1:8080", False),
        ("127.0.0.1:8080", "127.0.0.1:8080", False),  # no scheme
        ("http://127.0.0.1:8080", None, False),  # nothing to compare with
        ("http://[::1:8080", "[::1]:8080", False),  # unparsable
        ("http://127.0.0.1:8080", "127.0.0.1:port", False),
        ("http://127.0.0.1:99999", "127.0.0.1:99999", False),
    ],
)
def test_other_origins_are_refused(origin: str, host: str | None, tls: bool) -> None:
    assert not origin_allowed(origin, host, (), tls)


def test_listed_origins_are_allowed_exactly() -> None:
    allowed = ("https://chat.example", "null")
    assert origin_allowed("https://chat.example", "127.0.0.1:8080", allowed, False)
    assert origin_allowed("null", "127.0.0.1:8080", allowed, False)
    assert not origin_allowed("https://chat.example.evil", "127.0.0.1:8080", allowed, False)
    assert not origin_allowed("http://chat.example", "127.0.0.1:8080", allowed, False)
    assert not origin_allowed("https://sub.chat.example", "127.0.0.1:8080", allowed, False)
    assert origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080", allowed, False), (
        "the page's own origin stays allowed"
    )


def test_a_star_allows_every_origin() -> None:
    for origin in ("https://evil.example", "null", "chrome-extension://abc", "garbage"):
        assert origin_allowed(origin, "127.0.0.1:8080", ["*"], False)
        assert origin_allowed(origin, None, iter(["*"]), True)


# -- IPv6 clients count by their /64 --------------------------------------------------------


def test_ipv6_addresses_of_one_64_share_a_per_address_cap() -> None:
    occupancy = Occupancy(total=0, per_address=2)
    occupancy.enter("2001:db8:1:2::1")
    occupancy.enter("2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert occupancy.refusal("2001:db8:1:2::77") == 429, "a host has a whole /64 to pick from"
    assert occupancy.refusal("2001:db8:1:3::1") is None, "the next /64 is someone else"
    assert occupancy.refusal("192.0.2.1") is None
    occupancy.leave("2001:db8:1:2::1")
    assert occupancy.refusal("2001:db8:1:2::77") is None
    occupancy.leave("2001:db8:1:2:ffff:ffff:ffff:fffe")
    assert occupancy.by_address == {}


def test_ipv6_addresses_of_one_64_share_a_handshake_bucket() -> None:
    limiter = PerAddress(rate=1.0, burst=2, clock=Clock())
    assert limiter.reserve("2001:db8::1", most=5.0) == 0.0
    assert limiter.reserve("2001:db8::2", most=5.0) == 0.0
    assert limiter.reserve("2001:db8::ffff:3", most=5.0) == 1.0, "another of the same /64"
    assert limiter.reserve("2001:db8:0:1::1", most=5.0) == 0.0


def test_ipv4_addresses_count_one_by_one_however_they_are_spelled() -> None:
    occupancy = Occupancy(total=0, per_address=1)
    occupancy.enter("192.0.2.1")
    assert occupancy.refusal("192.0.2.2") is None
    assert occupancy.refusal("::ffff:192.0.2.1") == 429, "IPv4-mapped on a dual-stack socket"
    assert occupancy.refusal("::ffff:192.0.2.2") is None

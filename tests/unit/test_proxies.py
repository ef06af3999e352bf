"""rawchat.proxies without sockets: which peers are proxies, and what they say."""

from __future__ import annotations

import pytest

from rawchat.cli import config_from_args
from rawchat.config import Config
from rawchat.proxies import Forwarded, client_address, forwarded, networks

PROXY = networks(("127.0.0.1",))


# -- the client address --------------------------------------------------------------------------

PEER = "127.0.0.1"


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode(), value.encode()) for name, value in pairs]


def test_without_trust_proxy_forwarding_headers_are_ignored() -> None:
    forged = headers(("X-Forwarded-For", "203.0.113.7"), ("Forwarded", "for=198.51.100.1"))
    assert client_address(PEER, forged, proxies=()) == PEER


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ((("X-Forwarded-For", "203.0.113.7"),), "203.0.113.7"),
        # The proxy appends what it saw: the last entry. Earlier ones are the client's word.
        ((("X-Forwarded-For", "10.9.9.9, 203.0.113.7"),), "203.0.113.7"),
        ((("X-Forwarded-For", "10.9.9.9,203.0.113.7"),), "203.0.113.7"),
        ((("X-Forwarded-For", "10.9.9.9"), ("X-Forwarded-For", "203.0.113.7")), "203.0.113.7"),
        ((("X-Forwarded-For", "203.0.113.7:51234"),), "203.0.113.7"),
        ((("X-Forwarded-For", "2001:db8::7"),), "2001:db8::7"),
        ((("X-Forwarded-For", "[2001:db8::7]:51234"),), "2001:db8::7"),
        ((("X-Forwarded-For", "2001:DB8:0::7"),), "2001:db8::7"),  # one spelling per address
        ((("Forwarded", "for=192.0.2.60"),), "192.0.2.60"),
        ((("Forwarded", "for=192.0.2.60;proto=http;by=203.0.113.43"),), "192.0.2.60"),
        ((("Forwarded", "proto=https; For=192.0.2.60"),), "192.0.2.60"),
        ((("Forwarded", "for=192.0.2.43, for=198.51.100.17"),), "198.51.100.17"),
        ((("Forwarded", 'for="192.0.2.43:4711"'),), "192.0.2.43"),
        ((("Forwarded", 'for="[2001:db8:cafe::17]:4711"'),), "2001:db8:cafe::17"),
        ((("Forwarded", 'for="[2001:db8:cafe::17]"'),), "2001:db8:cafe::17"),
    ],
)
def test_behind_a_proxy_the_last_forwarded_address_counts(
    pairs: tuple[tuple[str, str], ...], expected: str
) -> None:
    assert client_address(PEER, headers(*pairs), proxies=PROXY) == expected


@pytest.mark.parametrize(
    "pairs",
    [
        (),
        (("X-Forwarded-For", "not-an-address"),),
        (("X-Forwarded-For", ""),),
        (("X-Forwarded-For", "203.0.113.7, "),),  # an empty last entry is not an address
        (("X-Forwarded-For", "999.1.1.1"),),
        (("Forwarded", "for=unknown"),),
        (("Forwarded", "for=_hidden"),),
        (("Forwarded", 'for="_gazonk"'),),
        (("Forwarded", "for="),),
        (("Forwarded", "proto=https"),),
        (("Forwarded", ";;,,="),),
        (("X-Real-IP", "203.0.113.7"),),  # not a header rawchat reads
    ],
)
def test_garbage_in_forwarding_headers_falls_back_to_the_peer(
    pairs: tuple[tuple[str, str], ...],
) -> None:
    assert client_address(PEER, headers(*pairs), proxies=PROXY) == PEER


# -- chains of proxies ----------------------------------------------------------------------


def test_hops_through_our_own_proxies_are_skipped_to_reach_the_client() -> None:
    ours = networks(("127.0.0.1", "10.0.0.0/8"))
    # The client, then our load balancer (10.1.1.1) that forwarded to nginx on 127.0.0.1.
    chain = headers(("X-Forwarded-For", "192.0.2.99, 203.0.113.7, 10.1.1.1"))
    assert client_address(PEER, chain, ours) == "203.0.113.7"
    assert client_address(PEER, chain, PROXY) == "10.1.1.1", "an unnamed hop is the client"
    only_ours = headers(("X-Forwarded-For", "10.1.1.2, 10.1.1.1"))
    assert client_address(PEER, only_ours, ours) == "10.1.1.2"


def test_a_peer_that_is_not_a_named_proxy_is_its_own_client() -> None:
    forged = headers(("X-Forwarded-For", "203.0.113.7"))
    assert client_address("192.0.2.9", forged, networks(("10.0.0.0/8",))) == "192.0.2.9"
    assert client_address("10.200.0.1", forged, networks(("10.0.0.0/8",))) == "203.0.113.7"
    mapped = "::ffff:127.0.0.1"  # a dual-stack socket's spelling of the proxy
    assert client_address(mapped, forged, PROXY) == "203.0.113.7"
    v6 = networks(("2001:db8:1::/48",))
    assert client_address("2001:db8:1::5", forged, v6) == "203.0.113.7"
    assert client_address("2001:db8:2::5", forged, v6) == "2001:db8:2::5"


# -- scheme and host ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        # What docs/proxy.md's nginx sends.
        (
            (("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-Proto", "https")),
            Forwarded("203.0.113.7", "https", None),
        ),
        (
            (("X-Forwarded-Proto", "HTTPS"), ("X-Forwarded-Host", "chat.example.com:8443")),
            Forwarded(None, "https", "chat.example.com:8443"),
        ),
        # The nearest proxy's word (the last value) counts.
        ((("X-Forwarded-Proto", "http, https"),), Forwarded(None, "https", None)),
        ((("X-Forwarded-Proto", "gopher"),), Forwarded(None, None, None)),
        (
            (("Forwarded", 'for=203.0.113.7;proto=https;host="chat.example.com"'),),
            Forwarded("203.0.113.7", "https", "chat.example.com"),
        ),
        (
            (("Forwarded", "for=192.0.2.1;proto=http, for=203.0.113.7;proto=https"),),
            Forwarded("203.0.113.7", "https", None),
        ),
        # With X-Forwarded-* present, Forwarded is the client's invention passed along.
        (
            (("X-Forwarded-Proto", "http"), ("Forwarded", "proto=https;for=192.0.2.1")),
            Forwarded(None, "http", None),
        ),
        ((), Forwarded(None, None, None)),
    ],
)
def test_the_scheme_and_host_a_proxy_reports(
    pairs: tuple[tuple[str, str], ...], expected: Forwarded
) -> None:
    assert forwarded(headers(*pairs), PROXY) == expected


@pytest.mark.parametrize("bad", ["example.com", "10.0.0.0/33", "", "127.0.0.1,10.0.0.0/8"])
def test_trust_proxy_takes_only_addresses_and_networks(bad: str) -> None:
    with pytest.raises(ValueError, match="not an IP address or network"):
        Config(trust_proxy=(bad,))


def test_the_command_line_names_proxies_by_commas_or_by_repeating_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--trust-proxy", "127.0.0.1, 10.0.0.0/8", "--trust-proxy", "2001:db8::/48"]
    assert config_from_args(args).trust_proxy == ("127.0.0.1", "10.0.0.0/8", "2001:db8::/48")
    assert config_from_args([]).trust_proxy == ()
    with pytest.raises(SystemExit):
        config_from_args(["--trust-proxy", "127.0.0.1,proxy.example"])
    assert "'proxy.example' is not an IP address or network" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        config_from_args(["--trust-proxy"])  # it names proxies; it is not a switch

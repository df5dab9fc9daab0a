"""The parsers' memos hold only what repeats: a flood of made-up names cannot grow them.

An edge sees names it does not serve all day (scanners, stale DNS, typos), each once.
Before the memos admitted a key on its second sighting, each such name stayed in two
memos until they filled (8,192 and 4,096 entries): the hour's soak saw every worker's
allocated blocks climb for the whole hour.
"""

from __future__ import annotations

from sniffer.wire import hostname, memo, tls
from sniffer.wire.hostname import normalize_hostname
from sniffer.wire.tls import parse_whole_hello
from tests.wire.hellos import modern_hello, records


def _hello(name: str) -> bytes:
    return records(modern_hello(sni=name.encode()))


def test_names_sent_once_never_enter_the_memos() -> None:
    before = len(tls._sni_memo), len(hostname._accepted)
    for i in range(3 * memo.SIGHTED_MAX):
        hello = parse_whole_hello(_hello(f"scan-{i}.unknown.example"), 16384)
        assert hello is not None and hello.sni == f"scan-{i}.unknown.example"
        assert normalize_hostname(f"Host-{i}.unknown.example") == f"host-{i}.unknown.example"
    assert (len(tls._sni_memo), len(hostname._accepted)) == before
    assert len(memo._sighted) <= memo.SIGHTED_MAX


def test_a_name_that_repeats_is_memoised_and_parses_the_same() -> None:
    wire = _hello("Tenant.Example.COM")
    first = parse_whole_hello(wire, 16384)
    second = parse_whole_hello(wire, 16384)
    third = parse_whole_hello(wire, 16384)
    assert first is not None and first == second == third
    assert first.sni == "tenant.example.com"
    assert "tenant.example.com" in tls._sni_memo.values()
    # From the memo now: the very same string object, no parse.
    assert third is not None and second is not None and third.sni is second.sni


def test_memos_stay_bounded_when_every_name_repeats() -> None:
    for i in range(hostname._ACCEPTED_MAX + 100):
        assert normalize_hostname(f"r{i}.example") == normalize_hostname(f"r{i}.example")
        assert len(hostname._accepted) <= hostname._ACCEPTED_MAX
    assert len(hostname._accepted) >= 100  # they were memoised (cleared once when full)

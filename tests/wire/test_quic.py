"""The QUIC Initial reader and the refusal: RFC vectors, real aioquic hellos, rebuilt
hellos (split, shuffled, coalesced, padded), and bad datagrams of every kind."""

from __future__ import annotations

import random

import pytest
from aioquic.buffer import Buffer
from aioquic.quic.crypto import CryptoPair
from hypothesis import given, settings
from hypothesis import strategies as st

from sniffer.wire.errors import HelloRejected, WireError
from sniffer.wire.ja4 import ja4_quic
from sniffer.wire.quic import (
    VERSION_1,
    VERSION_2,
    DatagramDropped,
    InitialReader,
    QuicHello,
    initial_keys,
    long_header_cids,
    protect,
    refusal_datagram,
    version_negotiation,
)
from sniffer.wire.sentinels import NEED_DATA
from tests.wire.quic_packets import (
    V1,
    V2,
    aioquic_datagrams,
    aioquic_hello,
    client_initial,
    crypto_frame,
    zero_rtt,
)

RFC_DCID = bytes.fromhex("8394c8f03e515708")

# RFC 9001 Appendix A.2 (v1) and RFC 9369 Appendix A.2 (v2): the protected client Initial
# whose payload is a CRYPTO frame with a ClientHello for example.com (ALPN "alpn").
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)
# Appendix A.3 of each: the server Initial (header and payload before protection).
RFC_SERVER_PAYLOAD = bytes.fromhex(
    "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf739"
    "88cfc79825df566dc5430b9a045a1200130100002e00330024001d00209d3c94"
    "0d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00"
    "020304"
)
RFC_SERVER = {
    VERSION_1: (
        "c1000000010008f067a5502a4262b50040750001",
        "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
        "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
        "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
        "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
        "2158407dd074ee",
    ),
    VERSION_2: (
        "d16b3343cf0008f067a5502a4262b50040750001",
        "dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698"
        "baeea26b91eb761d9b89237bbf87263017915358230035f7fd3945d88965cf17"
        "f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2"
        "c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca8"
        "4bed8521e2e140",
    ),
}


def reader(max_bytes: int = 16384) -> InitialReader:
    return InitialReader(max_bytes, deadline=10.0)


def feed_all(datagrams: list[bytes], r: InitialReader | None = None) -> QuicHello:
    r = r or reader()
    out = [r.feed(d, 0.0) for d in datagrams]
    assert all(o is NEED_DATA for o in out[:-1]), out
    assert isinstance(out[-1], QuicHello), out[-1]
    return out[-1]


# -- RFC vectors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "client", "server"),
    [
        (
            VERSION_1,
            ("1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2"),  # noqa: E501
            ("cf3a5331653c364c88f0f379b6067e37", "0ac1493ca1905853b0bba03e", "c206b8d9b9f0f37644430b490eeaa314"),  # noqa: E501
        ),
        (
            VERSION_2,
            ("8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9"),  # noqa: E501
            ("82db637861d55e1d011f19ea71d5d2a7", "dd13c276499c0249d3310652", "edf6d05c83121201b436e16877593c3a"),  # noqa: E501
        ),
    ],
)  # fmt: skip
def test_initial_keys_match_the_rfc_vectors(
    version: int, client: tuple[str, str, str], server: tuple[str, str, str]
) -> None:
    c, s = initial_keys(version, RFC_DCID)
    assert (c.key.hex(), c.iv.hex(), c.hp.hex()) == client
    assert (s.key.hex(), s.iv.hex(), s.hp.hex()) == server


@pytest.mark.parametrize(
    ("version", "packet"),
    [(VERSION_1, RFC9001_CLIENT_INITIAL), (VERSION_2, RFC9369_CLIENT_INITIAL)],
)
def test_rfc_client_initial_yields_its_hello(version: int, packet: bytes) -> None:
    assert len(packet) == 1200
    got = feed_all([packet])
    assert got.version == version
    assert got.dcid == RFC_DCID and got.scid == b""
    assert got.hello.sni == "example.com"
    assert got.hello.alpn == ("alpn",)


@pytest.mark.parametrize("version", [VERSION_1, VERSION_2])
def test_server_protection_matches_the_rfc_vectors(version: int) -> None:
    header, protected = RFC_SERVER[version]
    server_keys = initial_keys(version, RFC_DCID)[1]
    assert protect(server_keys, bytes.fromhex(header), 2, 1, RFC_SERVER_PAYLOAD) == (
        bytes.fromhex(protected)
    )


# -- real clients and rebuilt hellos ---------------------------------------------------


@pytest.mark.parametrize("version", [V1, V2])
def test_real_aioquic_first_flight(version: int) -> None:
    got = feed_all(aioquic_datagrams("app.example", version=version))
    assert got.version == version
    assert got.hello.sni == "app.example" and got.hello.alpn == ("h3",)
    assert ja4_quic(got.hello).startswith("q13d")


def test_post_quantum_size_hello_over_two_datagrams() -> None:
    datagrams = aioquic_datagrams("pq.example", quantum=True)
    assert len(datagrams) == 2
    r = reader()
    assert r.feed(datagrams[0], 0.0) is NEED_DATA
    got = r.feed(datagrams[1], 0.0)
    assert isinstance(got, QuicHello) and got.hello.sni == "pq.example"


def _chaos(hello: bytes, seed: int) -> list[bytes]:
    """The hello cut into CRYPTO frames of random sizes, duplicated here and there,
    shuffled, interleaved with PING and PADDING, packed into packets (some coalesced)
    and the packets into 1200-byte datagrams, some zero-padded after their packets."""
    rnd = random.Random(seed)
    cuts = sorted(rnd.sample(range(1, len(hello)), 9))
    frames = [
        crypto_frame(a, hello[a:b]) for a, b in zip([0, *cuts], [*cuts, len(hello)], strict=True)
    ]
    frames += rnd.sample(frames, 2)  # retransmitted pieces
    frames += [b"\x01"] * 3 + [b"\x00" * 5] * 2
    rnd.shuffle(frames)
    packets, pn = [], 0
    while frames:
        take = frames[: rnd.randint(1, 4)]
        frames = frames[len(take) :]
        packets.append(client_initial(b"".join(take), pn=pn))
        pn += 1
    datagrams, current = [], b""
    for p in packets:
        if current and (len(current) + len(p) > 1200 or rnd.random() < 0.3):
            datagrams.append(current)
            current = b""
        current += p
    datagrams.append(current)
    return [d + bytes(max(0, 1200 - len(d))) for d in datagrams]  # zero padding


@pytest.mark.parametrize("seed", range(8))
def test_hello_shuffled_and_split_across_packets_and_datagrams(seed: int) -> None:
    hello = aioquic_hello("chaos.example", quantum=seed % 2 == 1)
    datagrams = _chaos(hello, seed)
    r = reader()
    results = [r.feed(d, 0.0) for d in datagrams]
    # NEED_DATA until the datagram that completes the hello, then that hello again for
    # every later one (the retransmitted pieces): an outcome stays.
    first = next(i for i, x in enumerate(results) if x is not NEED_DATA)
    got = results[first]
    assert isinstance(got, QuicHello) and got.hello.sni == "chaos.example"
    assert all(x is got for x in results[first:])


def test_zero_rtt_coalesced_after_the_initial_is_skipped() -> None:
    hello = aioquic_hello("zero.example")
    datagram = client_initial(crypto_frame(0, hello)) + zero_rtt(size=300)
    datagram += bytes(1200 - len(datagram))
    assert feed_all([datagram]).hello.sni == "zero.example"


def test_a_datagram_of_only_0rtt_waits_for_the_hello() -> None:
    hello = aioquic_hello("zero.example")
    r = reader()
    first = client_initial(crypto_frame(0, hello[:100]), pad_to=1200)
    assert r.feed(first, 0.0) is NEED_DATA
    assert r.feed(zero_rtt(size=1100), 0.0) is NEED_DATA
    last = client_initial(crypto_frame(100, hello[100:]), pn=1, pad_to=1200)
    assert feed_all([last], r).hello.sni == "zero.example"


def test_keys_stay_those_of_the_first_dcid() -> None:
    hello = aioquic_hello("keys.example")
    r = reader()
    assert r.feed(client_initial(crypto_frame(0, hello[:50]), pad_to=1200), 0.0) is NEED_DATA
    # An Initial to another DCID (not this connection's keys) is skipped, not read.
    other = client_initial(
        crypto_frame(50, b"X" * (len(hello) - 50)), dcid=b"\x99" * 8, pad_to=1200
    )
    assert r.feed(other, 0.0) is NEED_DATA
    rest = client_initial(crypto_frame(50, hello[50:]), pn=1, pad_to=1200)
    assert r.feed(rest, 0.0).hello.sni == "keys.example"  # type: ignore[union-attr]


def test_an_undecryptable_datagram_is_dropped_and_changes_nothing() -> None:
    hello = aioquic_hello("drop.example")
    r = reader()
    assert r.feed(client_initial(crypto_frame(0, hello[:80]), pad_to=1200), 0.0) is NEED_DATA
    good = client_initial(crypto_frame(80, hello[80:]), pn=1, pad_to=1200)
    bad = bytearray(good)
    bad[-1] ^= 1
    with pytest.raises(DatagramDropped) as err:
        r.feed(bytes(bad), 0.0)
    assert err.value.reason == "undecryptable"
    assert r.feed(good, 0.0).hello.sni == "drop.example"  # type: ignore[union-attr]


def test_an_undecryptable_first_datagram_leaves_no_trace() -> None:
    # Found by the quic_initial fuzz target: the client's SCID was kept from a first
    # datagram that was then dropped, so a later refusal went to the wrong SCID.
    good = client_initial(crypto_frame(0, aioquic_hello("first.example")), pad_to=1200)
    bad = bytearray(client_initial(crypto_frame(0, b"\x01"), scid=b"\x33" * 8, pad_to=1200))
    bad[-1] ^= 1
    r = reader()
    with pytest.raises(DatagramDropped):
        r.feed(bytes(bad), 0.0)
    assert (r.started, r.version, r.dcid, r.scid) == (False, 0, b"", b"")
    got = r.feed(good, 0.0)
    assert isinstance(got, QuicHello) and got.scid == b"\x11" * 8


def unknown_version_datagram(version: int, dcid: bytes, scid: bytes, size: int) -> bytes:
    head = b"\xc3" + version.to_bytes(4, "big") + bytes((len(dcid),)) + dcid
    head += bytes((len(scid),)) + scid
    return head + bytes(size - len(head))


def test_version_negotiation_answers_an_unknown_version() -> None:
    dcid, scid = b"\x0d" * 8, b"\x05" * 5
    datagram = unknown_version_datagram(0x1A2A3A4A, dcid, scid, 1200)
    with pytest.raises(DatagramDropped, match="unsupported_version"):
        reader().feed(datagram, 0.0)
    answer = version_negotiation(datagram, 0x3F)
    # RFC 9000 §17.2.1: long header, version 0, the client's CIDs swapped, the versions.
    assert answer == (
        b"\xbf" + bytes(4) + b"\x05" + scid + b"\x08" + dcid
        + VERSION_1.to_bytes(4, "big") + VERSION_2.to_bytes(4, "big")
    )  # fmt: skip
    # Not answered: a known version, a Version Negotiation, a short datagram, a short header.
    assert version_negotiation(unknown_version_datagram(VERSION_1, dcid, scid, 1200), 0) is None
    assert version_negotiation(unknown_version_datagram(0, dcid, scid, 1200), 0) is None
    assert version_negotiation(datagram[:1199], 0) is None
    assert version_negotiation(b"\x40" + datagram[1:], 0) is None


def test_refusal_is_a_server_initial_connection_close_the_client_can_read() -> None:
    dcid, scid = b"\x01" * 8, b"\x02" * 8
    for version in (V1, V2):
        datagram = refusal_datagram(version, dcid, scid, 112, b"\x03" * 8, "unknown_name")
        assert len(datagram) < 3 * 1200 // 10
        assert long_header_cids(datagram) == (version, scid, b"\x03" * 8)
        pair = CryptoPair()
        pair.setup_initial(dcid, is_client=True, version=version)  # decrypts server Initials
        pn_at = 1 + 4 + 1 + 8 + 1 + 8 + 1 + 1
        _, payload, pn = pair.decrypt_packet(datagram, pn_at, 0)
        buf = Buffer(data=payload)
        assert buf.pull_uint_var() == 0x1C
        assert buf.pull_uint_var() == 0x100 + 112
        assert buf.pull_uint_var() == 0x06
        assert buf.pull_bytes(buf.pull_uint_var()) == b"unknown_name"


# -- bad input -------------------------------------------------------------------------


def test_bounds() -> None:
    hello = aioquic_hello("big.example")
    with pytest.raises(HelloRejected) as err:
        reader(max_bytes=200).feed(client_initial(crypto_frame(0, hello), pad_to=1200), 0.0)
    assert err.value.reason == "hello_too_large"
    r = reader()
    frames = b"".join(crypto_frame(i * 4, b"x") for i in range(70))
    with pytest.raises(HelloRejected) as err:
        r.feed(client_initial(frames, pad_to=1200), 0.0)
    assert err.value.reason == "hello_fragmented"
    with pytest.raises(HelloRejected) as err:
        InitialReader(16384, deadline=1.0).feed(aioquic_datagrams()[0], 1.5)
    assert err.value.reason == "hello_timeout"


def test_conflicting_retransmission_is_refused() -> None:
    hello = aioquic_hello("a.example")
    r = reader()
    assert r.feed(client_initial(crypto_frame(0, hello[:100]), pad_to=1200), 0.0) is NEED_DATA
    forged = hello[:50] + b"Z" * 50
    with pytest.raises(HelloRejected) as err:
        r.feed(client_initial(crypto_frame(0, forged), pn=1, pad_to=1200), 0.0)
    assert err.value.reason == "bad_hello"


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "not_initial"),
        (b"\x40" + bytes(1199), "not_initial"),
        (b"\xc0\x00\x00\x00\x02" + bytes(1195), "unsupported_version"),
        (b"\xc0\x00\x00\x00\x01\x08" + bytes(10), "bad_packet"),
        (RFC9001_CLIENT_INITIAL[:1100], "bad_packet"),
        (client_initial(crypto_frame(0, b"\x01\x00\x00\x05hello"), pad_to=300), "short_initial"),
        (zero_rtt(size=1190), "not_initial"),
    ],
)
def test_unusable_first_datagrams_are_dropped_with_a_reason(datagram: bytes, reason: str) -> None:
    with pytest.raises(DatagramDropped) as err:
        reader().feed(datagram, 0.0)
    assert err.value.reason == reason


def test_not_a_client_hello_is_refused() -> None:
    with pytest.raises(HelloRejected):
        reader().feed(client_initial(crypto_frame(0, b"\x02\x00\x00\x01\x00"), pad_to=1200), 0.0)
    with pytest.raises(HelloRejected):
        reader().feed(client_initial(b"\x08\x00\x00", pad_to=1200), 0.0)  # a STREAM frame


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400), st.integers(0, 1199), st.integers(1, 255))
def test_only_three_outcomes_whatever_the_bytes(junk: bytes, at: int, flip: int) -> None:
    for data in (junk, _mutated(at, flip)):
        try:
            out = reader().feed(data, 0.0)
        except WireError:
            continue
        assert out is NEED_DATA or isinstance(out, QuicHello)


def _mutated(at: int, flip: int) -> bytes:
    b = bytearray(RFC9001_CLIENT_INITIAL)
    b[at] ^= flip
    return bytes(b)


_REAL = aioquic_datagrams("seq.example", quantum=True)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=1300),
            st.sampled_from(_REAL),
            st.tuples(st.sampled_from(_REAL), st.integers(0, 1199), st.integers(1, 255)).map(
                lambda t: t[0][: t[1]] + bytes([t[0][t[1]] ^ t[2]]) + t[0][t[1] + 1 :]
            ),
        ),
        max_size=6,
    )
)
def test_only_three_outcomes_whatever_the_datagram_sequence(datagrams: list[bytes]) -> None:
    r = reader()
    done: QuicHello | None = None
    for data in datagrams:
        try:
            out = r.feed(data, 0.0)
        except DatagramDropped:
            continue  # this datagram only: the reader goes on
        except HelloRejected:
            return  # the flow is refused
        assert out is NEED_DATA or isinstance(out, QuicHello)
        if done is not None:
            assert out is done  # an outcome stays
        if isinstance(out, QuicHello):
            done = out

"""Every seed of every fuzz target meets its contract (no atheris needed: plain replay)."""

from __future__ import annotations

import pytest

from tests.fuzz.contract import CORPUS
from tests.fuzz.targets import all_targets

TARGETS = all_targets()


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_meet_the_contract(name: str) -> None:
    seeds = sorted(TARGETS[name].seeds.iterdir())
    assert len(seeds) >= 5, f"{name}: too few seeds in {TARGETS[name].seeds}"
    for seed in seeds:
        TARGETS[name].check(seed.read_bytes())


def test_every_corpus_folder_has_a_target() -> None:
    assert {p.name for p in CORPUS.iterdir() if p.is_dir()} == set(TARGETS)


def test_the_contract_can_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    # A sniffer that lost a byte of the replay must be caught, or the targets prove nothing.
    import sniffer.wire.sniff as sniff
    import tests.fuzz.targets.sniff as target
    from tests.wire.hellos import modern_hello, records

    real = sniff._new_tuple

    def lossy(cls: type, fields: tuple[object, ...]) -> object:
        return real(cls, (*fields[:3], fields[3][:-1]))

    stream = b"\x11\0\0\0\0" + records(modern_hello(post_quantum=False))
    target.check(stream)
    monkeypatch.setattr(sniff, "_new_tuple", lossy)
    with pytest.raises(AssertionError, match="replay"):
        target.check(stream)

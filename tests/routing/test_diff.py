"""`diff.changes` tells which objects two tuples do not share, as a naive walk would."""

from __future__ import annotations

import random

from sniffer.routing.diff import changes, same_ends


def naive(old: list[object], new: list[object]) -> tuple[set[int], set[int]]:
    was, now = {id(x) for x in old}, {id(x) for x in new}
    return was - now, now - was


def test_changes_agree_with_a_naive_walk_on_random_edits() -> None:
    rnd = random.Random(4)
    for _ in range(500):
        old = [object() for _ in range(rnd.randrange(0, 30))]
        new = list(old)
        for _ in range(rnd.randrange(0, 4)):
            op = rnd.random()
            if op < 0.4 and new:
                del new[rnd.randrange(len(new))]
            elif op < 0.8:
                new.insert(rnd.randrange(len(new) + 1), object())
            elif new:
                i, j = rnd.randrange(len(new)), rnd.randrange(len(new))
                new[i], new[j] = new[j], new[i]
        gone, came = changes(tuple(old), tuple(new))
        assert ({id(x) for x in gone}, {id(x) for x in came}) == naive(old, new)
        head, tail = same_ends(old, new)
        assert head + tail <= min(len(old), len(new))
        assert all(a is b for a, b in zip(old[:head], new[:head], strict=True))
        assert all(old[len(old) - 1 - k] is new[len(new) - 1 - k] for k in range(tail))


def test_same_ends_of_identical_tuples_cover_them_once() -> None:
    items = tuple(object() for _ in range(10))
    assert same_ends(items, items) == (10, 0)
    assert same_ends((), items) == (0, 0)
    assert changes(items, items) == ([], [])

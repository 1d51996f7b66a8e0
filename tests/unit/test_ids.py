"""Ids: unique, strictly increasing, and their time part stays on the wall clock at any rate."""

from __future__ import annotations

import itertools
import time

from gateway.ids import id_floor, looks_like_id, new_id


def _decode(chars: str) -> int:
    value = 0
    for char in chars:
        value = value * 32 + "0123456789abcdefghjkmnpqrstvwxyz".index(char)
    return value


def _time_part_ms(identifier: str) -> int:
    return _decode(identifier.split("_", 1)[1][:10])


def test_many_ids_a_millisecond_keep_the_time_part_on_the_wall_clock() -> None:
    before = time.time_ns() // 1_000_000
    ids = [new_id("inv") for _ in range(20_000)]  # far more than one per millisecond
    after = time.time_ns() // 1_000_000
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(looks_like_id(i, "inv") for i in ids)
    # The old scheme moved the time part on by 1 ms per id: 20 s ahead after 20,000 ids.
    assert before <= _time_part_ms(ids[0]) and _time_part_ms(ids[-1]) <= after + 1
    # "Created since" floors find exactly the ids made since: none made before `before` sorts after it.
    assert all(i >= id_floor("inv", before) for i in ids)
    assert new_id("inv") >= id_floor("inv", after)


def test_ids_of_one_millisecond_are_not_consecutive() -> None:
    """An id does not give away the next one: within a millisecond the random part grows by a random step."""
    ids = [new_id("inv") for _ in range(500)]
    same_ms = [
        _decode(b.split("_", 1)[1][10:]) - _decode(a.split("_", 1)[1][10:])
        for a, b in itertools.pairwise(ids)
        if _time_part_ms(a) == _time_part_ms(b)
    ]
    assert same_ms and all(step > 1 for step in same_ms) and len(set(same_ms)) == len(same_ms)

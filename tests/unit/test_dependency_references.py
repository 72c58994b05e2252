"""Reading depends_on without a database: "#n" references, cycles, and ids
that sort in creation order."""

from __future__ import annotations

from uuid import UUID

import pytest

from taskflow.dependencies import find_cycle, resolve
from taskflow.enqueue import new_task_id
from taskflow.errors import ValidationFailed


def _ids(count: int) -> list[UUID]:
    return [new_task_id() for _ in range(count)]


def test_batch_references_become_ids_without_duplicates() -> None:
    ids = _ids(3)
    outside = str(new_task_id())
    resolved = resolve([None, ["#0", outside, "#0"], ["#1", "#0"]], ids, batch=True)
    assert resolved == [(), (ids[0], UUID(outside)), (ids[1], ids[0])]


def test_a_cycle_is_found_through_any_number_of_items() -> None:
    ids = _ids(5)
    deps = [(), (ids[4],), (ids[1],), (ids[2],), (ids[3],)]
    cycle = find_cycle(deps, ids)
    assert cycle is not None
    assert cycle[0] == cycle[-1]
    assert sorted(set(cycle)) == [1, 2, 3, 4]
    assert find_cycle([(), (ids[0],), (ids[0], ids[1])], ids[:3]) is None


def test_a_chain_longer_than_python_recursion_is_checked() -> None:
    ids = _ids(5000)
    chain = [()] + [(ids[n],) for n in range(4999)]
    assert find_cycle(chain, ids) is None
    chain[0] = (ids[4999],)
    cycle = find_cycle(chain, ids)
    assert cycle is not None
    assert len(cycle) == 5001


def test_every_bad_reference_is_named() -> None:
    with pytest.raises(ValidationFailed) as raised:
        resolve([["#1"], ["#1", "#9"]], _ids(2), batch=True)
    assert raised.value.details == [
        {"field": "tasks[1].depends_on[0]", "message": "a task cannot wait for itself"},
        {"field": "tasks[1].depends_on[1]", "message": "no item #9 in this batch of 2"},
    ]


def test_ids_made_in_one_millisecond_still_sort_in_order() -> None:
    ids = _ids(50_000)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert {i.version for i in ids} == {7}

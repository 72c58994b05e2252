"""Reading ``depends_on`` (SPEC §9): task ids and "#n" references to items of
the same batch, resolved to ids, with the checks that need no database.

A whole graph is created in one request, so a cycle can only run through
items of that request (an existing task cannot depend on a new one): it is
found here, before anything is written. Ownership and the status of the
existing dependencies are checked under lock at insert
(:mod:`taskflow.store.inserts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from taskflow.errors import ValidationFailed
from taskflow.models import batch_reference

# Existing tasks one request may wait for: each is locked until the insert commits.
MAX_EXISTING_DEPENDENCIES = 1000


def _field(index: int, position: int, batch: bool) -> str:
    prefix = f"tasks[{index}]." if batch else ""
    return f"{prefix}depends_on[{position}]"


def resolve(
    references: Sequence[Sequence[str] | None], ids: Sequence[UUID], *, batch: bool
) -> list[tuple[UUID, ...]]:
    """Each item's dependencies as task ids, duplicates dropped, in the order
    given. Raises ValidationFailed naming every bad reference, or a cycle."""
    problems: list[dict[str, str]] = []
    resolved: list[tuple[UUID, ...]] = []
    existing: set[UUID] = set()
    for index, item_references in enumerate(references):
        deps: dict[UUID, None] = {}
        for position, reference in enumerate(item_references or ()):
            item = batch_reference(reference)
            if item is None:
                existing.add(UUID(reference))
                deps[UUID(reference)] = None
            elif not batch:
                problems.append(
                    {
                        "field": _field(index, position, batch),
                        "message": f"{reference} names an item of a batch: "
                        "use it in POST /api/tasks/batch, or give a task id",
                    }
                )
            elif item >= len(ids):
                problems.append(
                    {
                        "field": _field(index, position, batch),
                        "message": f"no item {reference} in this batch of {len(ids)}",
                    }
                )
            elif item == index:
                problems.append(
                    {
                        "field": _field(index, position, batch),
                        "message": "a task cannot wait for itself",
                    }
                )
            else:
                deps[ids[item]] = None
        resolved.append(tuple(deps))
    if len(existing) > MAX_EXISTING_DEPENDENCIES:
        problems.append(
            {
                "field": "tasks" if batch else "depends_on",
                "message": f"at most {MAX_EXISTING_DEPENDENCIES} existing tasks per request",
            }
        )
    if problems:
        raise ValidationFailed("invalid depends_on", details=problems)
    cycle = find_cycle(resolved, ids)
    if cycle is not None:
        path = " -> ".join(f"#{i}" for i in cycle)
        raise ValidationFailed(
            "depends_on makes a cycle: these tasks would wait for each other for ever",
            details=[{"field": f"tasks[{cycle[0]}].depends_on", "message": f"cycle {path}"}],
        )
    return resolved


def find_cycle(deps: Sequence[Sequence[UUID]], ids: Sequence[UUID]) -> list[int] | None:
    """A cycle among the items, as item indexes from one back to itself, or None.

    Iterative depth-first search: a batch of 1000 items chained one after
    another is deeper than Python recurses.
    """
    position = {task_id: index for index, task_id in enumerate(ids)}
    edges = [[position[d] for d in item if d in position] for item in deps]
    state = [0] * len(ids)  # 0 unseen, 1 on the current path, 2 done
    for root in range(len(ids)):
        if state[root]:
            continue
        path = [root]
        cursors = [0]
        state[root] = 1
        while path:
            node = path[-1]
            if cursors[-1] < len(edges[node]):
                target = edges[node][cursors[-1]]
                cursors[-1] += 1
                if state[target] == 1:
                    return [*path[path.index(target) :], target]
                if state[target] == 0:
                    state[target] = 1
                    path.append(target)
                    cursors.append(0)
            else:
                state[node] = 2
                path.pop()
                cursors.pop()
    return None

"""Catalog entries in the state a test needs, reached by the lifecycle's own events.

`Catalog.mark` only applies moves of `core.lifecycle.TRANSITIONS`, so a test cannot write "ready"
onto a counting row; `walk` takes the shortest chain of events from the row's state to the one
wanted, as the admission and download tasks would.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from cachetap.core.lifecycle import TRANSITIONS, EntryState, Event
from cachetap.store.catalog import Catalog


def path_of_events(start: EntryState | str, goal: EntryState | str) -> list[Event]:
    """The shortest chain of events from `start` to `goal` (empty when they are the same)."""
    start, goal = EntryState(start), EntryState(goal)
    came: dict[EntryState, tuple[EntryState, Event] | None] = {start: None}
    todo = deque([start])
    while todo:
        state = todo.popleft()
        if state == goal:
            break
        for (source, event), target in TRANSITIONS.items():
            if source == state and target not in came:
                came[target] = (state, event)
                todo.append(target)
    if goal not in came:
        raise ValueError(f"no chain of events leads from {start} to {goal}")
    events: list[Event] = []
    while came[goal] is not None:
        goal, event = came[goal]
        events.append(event)
    return events[::-1]


def walk(catalog: Catalog, key: str, state: EntryState | str, reason: str | None = None, **fields: Any) -> None:
    """Move the entry `key` to `state` by events of the lifecycle table; the last move also sets
    `reason` and `fields` (an entry already there gets them through `set_fields`)."""
    entry = catalog.get(key)
    if entry is None:
        raise KeyError(key)
    events = path_of_events(entry.state, state)
    if not events:
        if fields:
            catalog.set_fields(key, [state], **fields)
        return
    current = EntryState(entry.state)
    for event in events[:-1]:
        assert catalog.mark(key, event, current), (key, current, event)
        current = TRANSITIONS[(current, event)]
    assert catalog.mark(key, events[-1], current, reason=reason, **fields), (key, current, events[-1])

"""Undo a scope that exits while scopes entered after it are still active.

Scopes usually exit in the reverse order of their entries, and a scope's
exit then publishes the values it found on entry again. Two generators
closed in the other order, or two coroutines interleaving on one thread's
``"thread"`` store, exit out of order instead: publishing the old values
would wipe the changes of the scopes entered after it, and their later exits
would bring back this scope's values. :func:`exit_out_of_order` undoes this
scope's own changes and nothing else, and rewrites the records of the
scopes entered after it (see :class:`~contextual._core.backends.Scoped`) so that
their exits restore values without its changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .backends import MISSING, Scoped

if TYPE_CHECKING:
    from .backends import Backend, Values

__all__ = ["exit_out_of_order", "find"]


def find(values: Values, sets: Values) -> tuple[list[Scoped], Scoped] | None:
    """Find the record of the entry that set ``sets`` in the chain that ``values`` carry.

    Returns:
        ``(above, record)``: the records of the entries made after it and
        still active, innermost first, and its own record; or ``None`` if
        the entry is not active in this chain.
    """
    above: list[Scoped] = []
    current = values
    while type(current) is Scoped:
        if current.sets is sets:
            return above, current
        above.append(current)
        current = current.found
    return None


def exit_out_of_order(backend: Backend, above: list[Scoped], record: Scoped) -> None:
    """Exit the scope of ``record`` below the active scopes of ``above`` (see :func:`find`)."""
    before = record.found
    # The values when the next scope entered: this scope's own changes, and
    # nothing of the scopes above it.
    after = above[-1].found
    changed = [
        key
        for key in before.keys() | after.keys()
        if before.get(key, MISSING) is not after.get(key, MISSING)
    ]

    def undo(values: Values, shadowed: set[str]) -> dict[str, object]:
        undone = dict(values)
        for key in changed:
            if key in shadowed or values.get(key, MISSING) is not after.get(key, MISSING):
                continue  # changed again since: no longer this scope's
            old = before.get(key, MISSING)
            if old is MISSING:
                del undone[key]
            else:
                undone[key] = old
        return undone

    # Rebuild the records of the scopes above, lowest first, on the chain
    # below this scope, so that their exits restore values that don't have
    # this scope's changes.
    below: Values = before
    shadowed: set[str] = set()
    for above_record in reversed(above):
        found = undo(above_record.found, shadowed)
        below = below.like(found) if type(below) is Scoped else found
        rebuilt = Scoped()
        rebuilt.sets = above_record.sets
        rebuilt.found = below
        below = rebuilt
        shadowed.update(above_record.sets)
    current = backend.get()
    top = below
    assert type(top) is Scoped  # noqa: S101 (above is never empty)
    backend.set(top.like(undo(current, shadowed)))

"""The session listeners: SQLAlchemy ORM events handed to each :class:`~.capture.CaptureModels`.

The listeners are registered on SQLAlchemy's ``Session`` class once per process, however many
apps or captures it creates; each event goes to the registered captures that handle the session
(:meth:`~.capture.CaptureModels.wants`). A flush notes what changed, the outermost commit turns
it into captures and a rollback of the outermost transaction forgets it. A second capture of the
same model for the same sessions is refused. :func:`~.rows.same_database` is importable from
here too.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Table, event, inspect
from sqlalchemy.orm import (
    InstanceState,
    Mapper,
    ORMExecuteState,
    Session,
    SessionTransaction,
    UOWTransaction,
)
from sqlalchemy.orm.attributes import instance_state

from .pending import _INFO_KEY, _pendings
from .rows import _Role, same_database

if TYPE_CHECKING:
    from .capture import CaptureModels

__all__ = ["same_database"]

# -- the process-wide listeners ----------------------------------------------------------------

_registry: tuple[CaptureModels, ...] = ()
_lock = threading.Lock()
_listening = False


def _register(capture: CaptureModels) -> None:
    global _registry
    with _lock:
        for other in _registry:
            shared = set(capture._roles) & set(other._roles)
            if shared and _overlap(capture.engines, other.engines):
                names = ", ".join(sorted(m.class_.__name__ for m in shared))
                raise ValueError(
                    f"{names} already captured by {other!r} for the same sessions: every "
                    "change would be sent twice. close() it first, or pass engines= to tell "
                    "the apps apart"
                )
        _registry = (*_registry, capture)
        _listen()


def _unregister(capture: CaptureModels) -> None:
    global _registry
    with _lock:
        _registry = tuple(c for c in _registry if c is not capture)


def _overlap(a: tuple[Engine, ...] | None, b: tuple[Engine, ...] | None) -> bool:
    if a is None or b is None:
        return True
    return any(x is y for x in a for y in b)


def _listen() -> None:
    """Register the listeners on the ``Session`` class, once per process (under ``_lock``)."""
    global _listening
    if _listening:
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "do_orm_execute", _do_orm_execute)
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _after_soft_rollback)
    event.listen(Session, "after_transaction_end", _after_transaction_end)
    _listening = True


def _watching(session: Session) -> list[CaptureModels]:
    """The captures that handle this session now."""
    return [capture for capture in _registry if capture.wants(session)]


def _roles(
    captures: Sequence[CaptureModels], mapper: Mapper[Any]
) -> Iterator[tuple[CaptureModels, _Role]]:
    for capture in captures:
        role = capture._role_of(mapper)
        if role is not None:
            yield capture, role


def _before_flush(session: Session, flush_context: UOWTransaction, instances: Any) -> None:
    # A cart or line about to be deleted may have been expired by an earlier commit: read what
    # identifies it now, while its row still exists.
    if not _registry or not session.deleted:
        return
    captures = _watching(session)
    for obj in session.deleted:
        state: InstanceState[Any] = inspect(obj)
        for capture, role in _roles(captures, state.mapper):
            if role is _Role.CART and capture._cart is not None:
                for attr in capture._cart.keys:
                    getattr(obj, attr)
                capture._note(session, role, state, "deleted")
            elif role is _Role.CART_LINE and capture._cart is not None:
                for attr in capture._cart.line_keys:
                    getattr(obj, attr)


def _after_flush(session: Session, flush_context: UOWTransaction) -> None:
    if not _registry:
        return
    captures = _watching(session)
    if not captures:
        return
    changes = (("new", session.new), ("dirty", session.dirty), ("deleted", session.deleted))
    for how, objects in changes:
        for obj in objects:
            state: InstanceState[Any] = instance_state(obj)
            roles = list(_roles(captures, state.mapper))
            if not roles or (
                how == "dirty" and not session.is_modified(obj, include_collections=False)
            ):
                continue
            for capture, role in roles:
                capture._note(session, role, state, how)


def _do_orm_execute(state: ORMExecuteState) -> None:
    if not _registry or not (state.is_delete or state.is_update or state.is_insert):
        return
    table = getattr(state.statement, "table", None)
    if not isinstance(table, Table):
        return
    for capture in _watching(state.session):
        for mapper, role in capture._roles.items():
            if mapper.local_table == table:
                capture._bulk(state, role)


def _before_commit(session: Session) -> None:
    if not _registry or session.get_nested_transaction() is not None:
        return  # a savepoint: the outermost commit decides
    if _watching(session):
        session.flush()  # the commit would flush next; its changes are collected now
    for capture, pending in list(_pendings(session).items()):
        if pending.touched() and capture.active:
            capture._commit(session, pending)


def _after_commit(session: Session) -> None:
    if session.get_nested_transaction() is not None:
        return
    for capture, pending in list(_pendings(session).items()):
        if pending.deferred:
            capture._after_commit(pending)


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    if previous.parent is None:  # the outermost transaction: nothing of it happened
        session.info.pop(_INFO_KEY, None)
    # A savepoint's rollback keeps what was seen: at commit every cart, order and customer is
    # read again, and one that no longer exists is skipped.


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # committed (and handled) or closed without a commit
        session.info.pop(_INFO_KEY, None)
        # the shop's transaction is over: the errors counted in it can be written now
        for capture in _registry:
            if capture._errors.waiting:
                capture._errors.flush()

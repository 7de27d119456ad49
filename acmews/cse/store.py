"""Where the embedded CSE keeps its resources: the store interface, the :class:`Batch` of one
request's changes (and of the notifications they cause), and the in-memory store."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any

from zope.interface import Interface, implementer

from acmews.cse.resource import Delivery, Resource, Target

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from acmews.primitive import Request

__all__ = ["Batch", "IResourceReader", "IResourceStore", "MemoryResourceStore"]


class IResourceReader(Interface):
    """Reads of the resource tree. Resources are handed out by reference."""

    def get(ri: str) -> Resource | None:
        """The resource with resource ID ``ri``, or None."""

    def child(pi: str, rn: str) -> Resource | None:
        """The child of ``pi`` named ``rn``, or None."""

    def children(pi: str, ty: int | None = None) -> Sequence[Resource]:
        """The children of ``pi`` (only those of resource type ``ty`` if given) in creation
        order; a snapshot (a new sequence)."""

    def oldest_child(pi: str, ty: int) -> Resource | None:
        """The first-created child of ``pi`` with resource type ``ty``."""

    def latest_child(pi: str, ty: int) -> Resource | None:
        """The last-created child of ``pi`` with resource type ``ty``."""


class IResourceStore(IResourceReader):
    """Where the embedded CSE keeps its resources.

    Reads are synchronous on purpose: the CSE answers most requests without a Deferred, so a
    persistent store answers them from memory (an index or cache) and never blocks the
    reactor. What it persists of each resource is :meth:`Resource.record`, and it keeps the
    children of a resource in creation order.

    Changes come in one :meth:`apply` call per request that changes anything. Before that
    call the CSE has already replaced the ``attrs`` of updated resources (copy on write, so a
    store may compare or serialize them but never sees a mapping change later).
    """

    def apply(batch: Batch) -> Deferred[None] | None:
        """Apply ``batch``, the changes of one request, atomically.

        Reads see the changes as soon as ``apply`` returns. A durable store makes them durable
        before the CSE answers: it returns a Deferred that fires (with None) once they are,
        and the CSE sends the request's response and notifications only then. It makes
        batches durable in the order it got them. A store that keeps nothing beyond memory
        returns None.

        If the Deferred fails (the request is answered with its OneM2MError, or 5000), the
        changes are not there: a store that could not make them durable undoes them in memory
        first (the ``attrs`` the CSE replaced included), and one that refuses them at once
        (read-only) returns a failed Deferred without making them.

        Requests that only read are not held back: meanwhile they may see changes that are not
        durable yet (the changed resources are the very objects the store hands out).
        """

    def new_number() -> int:
        """A number this store never handed out before, for a new resource ID.

        A durable store never hands out a number again after a restart either (a number
        whose batch was not made durable may come again: nobody was answered with it)."""


_ADDED = 1
_UPDATED = 2
_REMOVED = 3  # removed from the store
_CANCELLED = 4  # added and removed again in the same batch: the store never sees it


@implementer(IResourceReader)
class Batch:
    """The changes one request makes, handed to :meth:`IResourceStore.apply` in one call.

    ``added``
        new resources, in creation order (a parent before its children).
    ``updated``
        stored resources whose ``attrs`` were replaced; each once (by identity), in the order
        of their first change. The store writes their ``attrs`` as they are when it applies the
        batch: the last version wins.
    ``removed``
        stored resources to forget, in the order of removal (children before their parents).

    A resource is in at most one of them: updating a resource added in the batch leaves it an
    addition (written with its last ``attrs``); removing it cancels the addition (the store
    never hears of it); removing an updated resource drops the update. An update after the
    removal is ignored. A store may apply ``removed``, then ``added``, then ``updated``.

    Reads through a batch (:class:`IResourceReader`) see the store as it will be once the
    batch is applied: removed resources are gone, added ones are there (the newest children
    of their parent).

    ``notifications``
        what the request's events cause (:meth:`notify`), or None: the CSE hands them to its
        notifier once the batch is applied (durable). A store ignores them, and ``urgent``
        (how many of them go out before the response) and ``request``.
    """

    __slots__ = (
        "_parents",
        "_state",
        "_store",
        "_types",
        "added",
        "notifications",
        "removed",
        "request",
        "updated",
        "urgent",
    )

    def __init__(self, store: IResourceReader, request: Request | None = None) -> None:
        self._store = store
        #: the request making these changes (None: the CSE's own)
        self.request = request
        #: the first ``urgent`` notifications are handed to the sender before the response
        self.urgent = 0
        self.added: list[Resource] = []
        self.updated: list[Resource] = []
        self.removed: list[Resource] = []
        #: resource (by identity) -> _ADDED, _UPDATED, _REMOVED or _CANCELLED
        self._state: dict[Resource, int] = {}
        #: the resource types of what is in _state
        self._types: set[int] = set()
        #: the parents of the removed resources (children() filters only theirs)
        self._parents: set[str] | None = None
        #: made by the first notification: most requests cause none
        self.notifications: list[Delivery] | None = None

    def __len__(self) -> int:
        """How many resources the store must write or forget."""
        return len(self.added) + len(self.updated) + len(self.removed)

    def __bool__(self) -> bool:
        return bool(self.added or self.updated or self.removed)

    def __repr__(self) -> str:
        return (
            f"<Batch +{len(self.added)} ~{len(self.updated)} -{len(self.removed)}: "
            f"{self.added!r} {self.updated!r} {self.removed!r}>"
        )

    # --- changes ------------------------------------------------------------------------------

    def add(self, resource: Resource) -> None:
        """``resource`` is new (its parent is stored or added, its name is free)."""
        if resource in self._state:
            raise ValueError(f"{resource!r} is in the batch already")
        self._state[resource] = _ADDED
        self._types.add(resource.kind.ty)
        self.added.append(resource)

    def update(self, resource: Resource) -> None:
        """``resource.attrs`` was replaced."""
        state = self._state
        if resource not in state:
            state[resource] = _UPDATED
            self._types.add(resource.kind.ty)
            self.updated.append(resource)

    def remove(self, resource: Resource) -> None:
        """``resource`` is gone (the CSE removes its children too, before it)."""
        state = self._state
        was = state.get(resource)
        if was == _ADDED:
            state[resource] = _CANCELLED
            self.added.remove(resource)
            return
        if was is None:
            self.removed.append(resource)
        elif was == _UPDATED:
            self.updated.remove(resource)
            self.removed.append(resource)
        else:
            return  # removed already
        state[resource] = _REMOVED
        self._types.add(resource.kind.ty)
        parents = self._parents
        if parents is None:
            parents = self._parents = set()
        parents.add(resource.pi)

    def gone(self, resource: Resource) -> bool:
        """True if the batch removes ``resource`` (or cancels its addition)."""
        return self._state.get(resource, 0) >= _REMOVED

    def types(self) -> AbstractSet[int]:
        """The resource types of what the batch adds, updates or removes (or added, then
        removed): kept as it changes, so that asking costs nothing however large it is."""
        return self._types

    def notify(
        self,
        targets: Iterable[Target],
        pc: dict[str, Any],
        tag: object = None,
        urgent: bool = False,
    ) -> None:
        """Send ``pc`` to each of ``targets`` once the batch has been applied; ``tag`` is for
        the notifier. ``urgent`` ones (and all before them) go before the response."""
        notifications = self.notifications
        if notifications is None:
            notifications = self.notifications = []
        notifications.extend([(target, pc, tag) for target in targets])
        if urgent:
            self.urgent = len(notifications)

    def notify_one(self, target: Target, pc: dict[str, Any], tag: object = None) -> None:
        """:meth:`notify` of one target, not urgent (a fan-out's: cheaper)."""
        notifications = self.notifications
        if notifications is None:
            self.notifications = [(target, pc, tag)]
        else:
            notifications.append((target, pc, tag))

    # --- reads (IResourceReader) --------------------------------------------------------------

    def _kept(self, resource: Resource | None) -> Resource | None:
        if resource is None or self._state.get(resource) == _REMOVED:
            return None
        return resource

    def get(self, ri: str) -> Resource | None:
        # (_kept written out: a fan-out's notifier asks this once per subscriber)
        found = self._store.get(ri)
        if found is not None and self._state.get(found) != _REMOVED:
            return found
        for resource in self.added:
            if resource.ri == ri:
                return resource
        return None

    def child(self, pi: str, rn: str) -> Resource | None:
        found = self._kept(self._store.child(pi, rn))
        if found is None:
            for resource in self.added:
                if resource.rn == rn and resource.pi == pi:
                    return resource
        return found

    def children(self, pi: str, ty: int | None = None) -> Sequence[Resource]:
        children = self._store.children(pi, ty)
        parents = self._parents
        if parents is not None and pi in parents and children:
            state = self._state
            children = [c for c in children if state.get(c) != _REMOVED]
        added = self.added
        for resource in added:
            if resource.pi == pi and (ty is None or resource.ty == ty):
                new = (r for r in added if r.pi == pi and (ty is None or r.ty == ty))
                return [*children, *new]
        return children

    def oldest_child(self, pi: str, ty: int) -> Resource | None:
        store = self._store
        found = store.oldest_child(pi, ty)
        if found is not None and self._state.get(found) == _REMOVED:
            # the batch removed the oldest already (an eviction of several): the next one
            found = next(iter(self.children(pi, ty)), None)
        if found is None:
            for resource in self.added:
                if resource.ty == ty and resource.pi == pi:
                    return resource
        return found

    def latest_child(self, pi: str, ty: int) -> Resource | None:
        for resource in reversed(self.added):
            if resource.ty == ty and resource.pi == pi:
                return resource
        found = self._store.latest_child(pi, ty)
        if found is not None and self._state.get(found) == _REMOVED:
            found = next(reversed(self.children(pi, ty)), None)
        return found


@implementer(IResourceStore)
class MemoryResourceStore:
    """Dicts only: resource ID -> resource, and per parent insertion-ordered child indexes.

    Children are kept in creation order, all of them and per resource type, so the oldest and
    latest instance of a container are found from either end without sorting, and the
    subscriptions of a resource without looking at its instances. The resources themselves
    are what is stored, so an update has nothing to write.
    """

    def __init__(self) -> None:
        self._resources: dict[str, Resource] = {}
        #: parent ri -> {child ri: child}, in creation order
        self._children: dict[str, dict[str, Resource]] = {}
        #: parent ri -> ty -> {child ri: child}, in creation order
        self._typed: dict[str, dict[int, dict[str, Resource]]] = {}
        #: parent ri -> {child rn: child}
        self._names: dict[str, dict[str, Resource]] = {}
        #: the last number :meth:`new_number` handed out
        self.last_number = 0

    def __len__(self) -> int:
        return len(self._resources)

    def get(self, ri: str) -> Resource | None:
        return self._resources.get(ri)

    def child(self, pi: str, rn: str) -> Resource | None:
        names = self._names.get(pi)
        return None if names is None else names.get(rn)

    def children(self, pi: str, ty: int | None = None) -> Sequence[Resource]:
        if ty is None:
            children = self._children.get(pi)
        else:
            typed = self._typed.get(pi)
            children = None if typed is None else typed.get(ty)
        return [] if children is None else list(children.values())

    def _of_type(self, pi: str, ty: int) -> dict[str, Resource] | None:
        typed = self._typed.get(pi)
        return None if typed is None else typed.get(ty)

    def oldest_child(self, pi: str, ty: int) -> Resource | None:
        children = self._of_type(pi, ty)
        return next(iter(children.values())) if children else None

    def latest_child(self, pi: str, ty: int) -> Resource | None:
        children = self._of_type(pi, ty)
        return next(reversed(children.values())) if children else None

    def new_number(self) -> int:
        self.last_number += 1
        return self.last_number

    def apply(self, batch: Batch) -> Deferred[None] | None:
        for resource in batch.removed:
            self._remove(resource)
        for resource in batch.added:
            self._add(resource)
        # batch.updated: nothing to write, the stored objects are the resources themselves
        return None

    def _add(self, resource: Resource) -> None:
        ri = resource.ri
        self._resources[ri] = resource
        pi = resource.attrs.get("pi")
        if pi:
            self._children.setdefault(pi, {})[ri] = resource
            self._typed.setdefault(pi, {}).setdefault(resource.ty, {})[ri] = resource
            self._names.setdefault(pi, {})[resource.rn] = resource

    def _remove(self, resource: Resource) -> None:
        ri = resource.ri
        if self._resources.get(ri) is not resource:
            return
        del self._resources[ri]
        self._children.pop(ri, None)
        self._typed.pop(ri, None)
        self._names.pop(ri, None)
        pi = resource.attrs.get("pi")
        if pi:
            siblings = self._children.get(pi)
            if siblings is not None:
                siblings.pop(ri, None)
            same_type = self._of_type(pi, resource.ty)
            if same_type is not None:
                same_type.pop(ri, None)
            names = self._names.get(pi)
            if names is not None and names.get(resource.rn) is resource:
                del names[resource.rn]

"""The in-memory :class:`~acmews.interfaces.IResourceStore`."""

from __future__ import annotations

from collections.abc import Sequence

from zope.interface import implementer

from acmews.cse.resource import Resource
from acmews.interfaces import IResourceStore

__all__ = ["MemoryResourceStore"]


@implementer(IResourceStore)
class MemoryResourceStore:
    """Dicts only: resource ID -> resource, and per parent an insertion-ordered child index.

    Children are kept in creation order, so the oldest and latest instance of a container are
    found from either end without sorting.
    """

    def __init__(self) -> None:
        self._resources: dict[str, Resource] = {}
        #: parent ri -> {child ri: child}, in creation order
        self._children: dict[str, dict[str, Resource]] = {}
        #: parent ri -> {child rn: child}
        self._names: dict[str, dict[str, Resource]] = {}

    def __len__(self) -> int:
        return len(self._resources)

    def get(self, ri: str) -> Resource | None:
        return self._resources.get(ri)

    def child(self, pi: str, rn: str) -> Resource | None:
        names = self._names.get(pi)
        return None if names is None else names.get(rn)

    def children(self, pi: str) -> Sequence[Resource]:
        children = self._children.get(pi)
        return [] if children is None else list(children.values())

    def oldest_child(self, pi: str, ty: int) -> Resource | None:
        for child in self._children.get(pi, {}).values():
            if child.ty == ty:
                return child
        return None

    def latest_child(self, pi: str, ty: int) -> Resource | None:
        for child in reversed(self._children.get(pi, {}).values()):
            if child.ty == ty:
                return child
        return None

    def add(self, resource: Resource) -> None:
        ri = resource.ri
        self._resources[ri] = resource
        pi = resource.attrs.get("pi")
        if pi:
            self._children.setdefault(pi, {})[ri] = resource
            self._names.setdefault(pi, {})[resource.rn] = resource

    def update(self, resource: Resource) -> None:
        """Nothing to do: the resource object itself is what is stored."""

    def remove(self, ri: str) -> None:
        resource = self._resources.pop(ri, None)
        if resource is None:
            return
        self._children.pop(ri, None)
        self._names.pop(ri, None)
        pi = resource.attrs.get("pi")
        if pi:
            siblings = self._children.get(pi)
            if siblings is not None:
                siblings.pop(ri, None)
            names = self._names.get(pi)
            if names is not None and names.get(resource.rn) is resource:
                del names[resource.rn]

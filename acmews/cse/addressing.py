"""Which resource of this CSE a target names.

A target (``to``, an ``nu``, an ``acpi`` entry) is CSE-relative (structured ``cse-in/ae/cnt``,
``-/ae/cnt`` or unstructured: a resource ID, optionally followed by names), SP-relative
(``/id-in/...``, ``~/id-in/...``) or absolute (``//sp/id-in/...``, ``_/sp/id-in/...``). Its last
segment may name a virtual child (``la``/``ol`` of a container).
"""

from __future__ import annotations

from acmews.cse.config import CSEConfig
from acmews.cse.resource import Resource, ResourceReader
from acmews.cse.store import IResourceStore
from acmews.errors import NotFound, OneM2MError, TargetNotReachable

__all__ = ["Addressing"]


class Addressing:
    """Resolves targets against ``store``; ``base`` is the CSEBase."""

    def __init__(self, config: CSEConfig, store: IResourceStore, base: Resource) -> None:
        self._cse_id = config.cse_id
        self._cse_name = config.cse_name
        self._sp_id = config.sp_id
        self._store = store
        self.base = base
        sp_relative = config.cse_id
        #: every target that names the CSEBase itself
        self.base_targets = frozenset(
            {
                config.cse_name,
                "-",
                base.ri,
                sp_relative,
                f"{sp_relative}/{config.cse_name}",
                f"{config.sp_id}{sp_relative}",
                f"{config.sp_id}{sp_relative}/{config.cse_name}",
            }
        )

    def foreign_cse(self, to: str) -> str | None:
        """The CSE-ID (or SP) ``to`` names when that is not this CSE, else None."""
        if not to.startswith(("/", "~", "_")):
            return None
        sp_relative = self.sp_relative(to)
        if sp_relative is None:
            return to
        cse_id = self._cse_id
        if sp_relative == cse_id or sp_relative.startswith(cse_id + "/"):
            return None
        return "/" + sp_relative[1:].split("/", 1)[0]

    def sp_relative(self, to: str) -> str | None:
        """``to`` in SP-relative form, or None when it names another SP."""
        if to[0] == "~":
            to = to[1:]
        elif to[0] == "_":
            to = "/" + to[1:]
        if to.startswith("//"):
            sp_id = self._sp_id
            if to != sp_id and not to.startswith(sp_id + "/"):
                return None
            to = to[len(sp_id) :] or "/"
        return to

    def locate(self, to: str, reader: ResourceReader | None = None) -> tuple[Resource, str | None]:
        """The resource ``to`` addresses, and ``la``/``ol`` when it names a virtual child.

        ``reader`` is the store by default; a request's :class:`~acmews.cse.store.Batch` while
        it is changing resources.
        """
        if to in self.base_targets:
            return self.base, None
        path = to
        if to[0] in "/~_":
            sp_relative = self.sp_relative(to)
            cse_id = self._cse_id
            if sp_relative is None or not sp_relative.startswith(cse_id + "/"):
                raise TargetNotReachable(f"target {to!r} is not on this CSE")
            path = sp_relative[len(cse_id) + 1 :]
        segments = [s for s in path.split("/") if s]
        if not segments:
            raise NotFound(f"no resource at {to!r}")
        first = segments[0]
        store = reader if reader is not None else self._store
        if first == self._cse_name or first == "-":
            resource = self.base
        else:
            found = store.get(first)
            if found is None:
                raise NotFound(f"no resource with ID {first!r} ({to!r})")
            resource = found
        last = len(segments) - 1
        for i in range(1, len(segments)):
            name = segments[i]
            if i == last and name in resource.kind.virtual:
                return resource, name
            child = store.child(resource.ri, name)
            if child is None:
                raise NotFound(f"no resource {name!r} under {resource.srn!r} ({to!r})")
            resource = child
        return resource, None

    def find(self, address: str) -> Resource | None:
        """A resource by ``ri`` or by any address form (``acpi`` entries), or None."""
        found = self._store.get(address)
        if found is not None or not isinstance(address, str) or not address:
            return found
        try:
            resource, virtual = self.locate(address)
        except OneM2MError:
            return None
        return resource if virtual is None else None

    def virtual(self, resource: Resource, which: str) -> Resource:
        """The resource the virtual child ``which`` (``la``/``ol``) of ``resource`` stands for."""
        return resource.kind.virtual_child(self._store, resource, which)

    def parent(self, resource: Resource) -> Resource | None:
        pi = resource.attrs.get("pi")
        return self._store.get(pi) if pi else None

"""What a response carries: the result content (``rcn``, checked per operation), a partial
retrieve (``m2m:atrl``), and the resources filter criteria select below a target (conditional
retrieval and discovery), within bounds.

TS-0001 8.1.2 says which ``rcn`` each operation allows (TS-0004 7.3.2.1: any other gets 4000).
Answers that list resources below the target (``rcn`` 4, 5, 6, 8 and 11) hold at most
:data:`MAX_TREE` of them, in pre-order (a parent before its children, children in creation
order), each one the originator may RETRIEVE (DISCOVER, for a discovery); a resource it may not
see is left out, not what is below it (TS-0001 10.2.6). When more remain, the answer is partial
(``cnst`` 1) and ``cnot`` says which ``fc.ofst`` gets the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from acmews.codes import ACOP, Operation, ResourceType
from acmews.cse.access import AccessControl
from acmews.cse.filters import DISCOVERY, Filter, parse_filter
from acmews.cse.resource import MAX_LIST, Resource
from acmews.cse.store import IResourceReader
from acmews.errors import BadRequest, NotAcceptable, NotFound
from acmews.primitive import Request

__all__ = ["PARTIAL_CONTENT", "Content"]

#: the result content each operation allows (TS-0001 8.1.2): 0 nothing, 1 attributes, 2
#: hierarchical address, 3 address and attributes, 4 attributes and child resources, 5
#: attributes and child resource references, 6 child resource references, 8 child resources,
#: 9 modified attributes, 11 discovery result references (7 needs an announced resource and
#: 10 a semantic query: this CSE has neither)
_RCNS: dict[int, frozenset[int]] = {
    Operation.CREATE: frozenset({0, 1, 2, 3, 9}),
    Operation.RETRIEVE: frozenset({1, 4, 5, 6, 8, 11}),
    Operation.UPDATE: frozenset({0, 1, 9}),
    Operation.DELETE: frozenset({0, 1, 4, 5, 6, 8}),
}
#: what a discovery (``fc.fu`` 1) may answer with: 11 (the default) lists addresses
_DISCOVERY_RCNS = frozenset({4, 5, 6, 8, 11})
_CNT = ResourceType.CNT
_CIN = ResourceType.CIN
#: resources one answer may list, and resources one request may look at to find them
MAX_TREE = 10_000
MAX_VISITED = 200_000
#: ``cnst`` (m2m:contentStatus) of an answer that holds only part of what was asked for
PARTIAL_CONTENT = 1

#: a listed resource and the nearest listed resource above it (None: the target)
Entry = tuple[Resource, str | None]


class Content:
    """Builds the ``pc`` of responses; what is below a target is shown only to who may see it."""

    def __init__(self, store: IResourceReader, access: AccessControl, admin: str) -> None:
        self._store = store
        self._access = access
        self._admin = admin

    @staticmethod
    def rcn(request: Request, default: int) -> int:
        """The request's ``rcn``, or ``default``; 4000 for one its operation does not allow."""
        rcn = request.rcn
        if rcn is None:
            return default
        allowed = _RCNS.get(request.op, frozenset())
        if rcn not in allowed:
            raise BadRequest(
                f"result content (rcn) {rcn} is not allowed for {request.op.name} (allowed: "
                f"{', '.join(map(str, sorted(allowed)))})"
            )
        return rcn

    # --- RETRIEVE ----------------------------------------------------------------------------

    def retrieve(
        self, request: Request, resource: Resource, attribute: str | None = None
    ) -> tuple[Any, int | None]:
        """The ``pc`` of a RETRIEVE of ``resource`` and, when it is partial, the ``fc.ofst``
        of the rest (else None). ``attribute``: the one a ``#`` in the target names."""
        originator = request.fr
        flt = parse_filter(request.fc) if request.fc is not None else None
        discovery = flt is not None and flt.fu == DISCOVERY
        rcn = self.rcn(request, 11 if discovery else 1)
        names = _attribute_list(request.pc, attribute)
        if discovery and rcn not in _DISCOVERY_RCNS:
            raise BadRequest(
                "a discovery (fc.fu 1) answers with rcn 11 (the default), 4, 5, 6 or 8"
            )
        if not discovery or rcn in (4, 5):  # what is returned of the target itself
            self._access.check(originator, resource, ACOP.RETRIEVE)
        if rcn == 1:
            # conditional retrieval (TS-0001 10.1.3): the target exists only if it matches
            if flt is not None and not flt.matches(resource):
                raise NotFound(f"{resource.srn!r} does not match the filter criteria (fc)")
            if names is None:
                return resource.pc, None
            attrs = resource.attrs
            return {resource.kind.key: {n: attrs[n] for n in names if n in attrs}}, None
        if names is not None:
            raise BadRequest("a partial retrieve (m2m:atrl, or a #attribute) goes with rcn 1")
        acop = ACOP.DISCOVERY if discovery else ACOP.RETRIEVE
        entries, rest = self._listing(resource, originator, acop, flt, strict=False)
        return self._shape(resource, rcn, entries, _drt(request)), rest

    # --- CREATE, UPDATE, DELETE --------------------------------------------------------------

    def result(
        self,
        resource: Resource,
        rcn: int,
        request: Request,
        before: Mapping[str, Any] | None = None,
    ) -> Any:
        """The ``pc`` of a CREATE or UPDATE of ``resource`` (``before``: its attributes before
        the UPDATE)."""
        if rcn == 9:
            return self.modified(resource, request, before)
        return self.content(resource, rcn, request.fr)

    @staticmethod
    def check_condition(fc: Mapping[Any, Any], resource: Resource) -> None:
        """An UPDATE or DELETE with filter criteria applies only to a target that matches
        them (TS-0001 10.1.4, 10.1.5: its existence is checked with them): else 4004."""
        flt = parse_filter(fc)
        if flt.fu == DISCOVERY:
            raise BadRequest("a discovery (fc.fu 1) is a RETRIEVE")
        if not flt.matches(resource):
            raise NotFound(f"{resource.srn!r} does not match the filter criteria (fc)")

    def content(self, resource: Resource, rcn: int, originator: str | None) -> Any:
        """The ``pc`` for ``resource`` with result content ``rcn`` (not 9: :meth:`modified`)."""
        if rcn == 1:
            return resource.pc
        if rcn == 0:
            return None
        if rcn == 2:
            return {"m2m:uri": resource.srn}
        if rcn == 3:
            return {"m2m:rce": {resource.kind.key: resource.attrs, "uri": resource.srn}}
        # a DELETE's answer cannot be partial: the rest will be gone
        entries, _ = self._listing(resource, originator, ACOP.RETRIEVE, None, strict=True)
        return self._shape(resource, rcn, entries, 1)

    @staticmethod
    def modified(
        resource: Resource, request: Request, before: Mapping[str, Any] | None = None
    ) -> Any:
        """The ``pc`` for rcn 9 (TS-0001 8.1.2, TS-0004 7.3.3.12): the attributes the CSE
        added, changed or removed (as null) otherwise than the request's content asked,
        compared with ``before`` (an UPDATE) or with nothing (a CREATE); no ``pc`` if none."""
        key = resource.kind.key
        body = request.pc.get(key) if isinstance(request.pc, dict) else None
        asked: Mapping[str, Any] = body if isinstance(body, dict) else {}
        old = before if before is not None else {}
        new = resource.attrs
        changed: dict[str, Any] = {}
        for name in new.keys() | old.keys():
            value = new.get(name)
            if value == old.get(name) and name in new and name in old:
                continue  # not changed at all
            if name in asked and asked[name] == value:
                continue  # changed as asked (a null asked for removes)
            changed[name] = value
        return {key: changed} if changed else None

    # --- listing what is below a target ------------------------------------------------------

    def _listing(
        self,
        root: Resource,
        originator: str | None,
        acop: ACOP,
        flt: Filter | None,
        strict: bool,
    ) -> tuple[list[Entry], int | None]:
        """The resources below ``root`` that match ``flt`` and that ``originator`` may
        ``acop``, pre-order, from ``flt.ofst`` on, at most ``flt.lim`` and :data:`MAX_TREE`
        (beyond: 5207 if ``strict``, else the ``fc.ofst`` where the rest starts)."""
        ofst, lim, lvl = (1, None, None) if flt is None else (flt.ofst, flt.lim, flt.lvl)
        limit = MAX_TREE if lim is None else min(lim, MAX_TREE)
        skip = ofst - 1
        matches = None if flt is None or not flt.conditions else flt.matches
        allowed = None if originator == self._admin else self._access.allowed
        children = self._children
        found: list[Entry] = []
        visited = 0
        stack: list[tuple[Resource, int, str | None]] = [
            (c, 1, None) for c in reversed(children(root))
        ]
        while stack:
            resource, level, anchor = stack.pop()
            visited += 1
            if visited > MAX_VISITED:
                raise NotAcceptable(
                    f"the answer would look at more than {MAX_VISITED} resources: narrow it "
                    "(fc.lvl, fc.lim, a deeper target)"
                )
            below = anchor
            if (matches is None or matches(resource)) and (
                allowed is None or allowed(originator, resource, acop)
            ):
                if skip:
                    skip -= 1
                elif len(found) == limit:
                    if strict:
                        raise NotAcceptable(
                            f"the answer would hold more than {MAX_TREE} resources: use rcn 0 or 1"
                        )
                    return found, ofst + limit
                else:
                    found.append((resource, anchor))
                    below = resource.ri
            if lvl is None or level < lvl:
                stack.extend((c, level + 1, below) for c in reversed(children(resource)))
        return found, None

    def _children(self, resource: Resource) -> Sequence[Resource]:
        """The children of ``resource`` that a listing shows: not the contentInstances of a
        container whose disableRetrieval is true (TS-0004 7.4.7.2.2: not retrieved, so not
        discovered either)."""
        children = self._store.children(resource.ri)
        if resource.ty == _CNT and resource.attrs.get("disr"):
            return [c for c in children if c.ty != _CIN]
        return children

    def _shape(self, root: Resource, rcn: int, entries: list[Entry], drt: int) -> Any:
        """The ``pc`` of result content ``rcn`` 4, 5, 6, 8 or 11 from the listed ``entries``."""
        key = root.kind.key
        if rcn == 11:
            if drt == 1:
                return {"m2m:uril": [r.srn for r, _ in entries]}
            return {"m2m:uril": [r.ri for r, _ in entries]}
        if rcn in (5, 6):
            references = [
                {"nm": r.rn, "typ": r.ty, "val": r.srn if drt == 1 else r.ri} for r, _ in entries
            ]
            if rcn == 6:
                return {"m2m:rrl": {"rrf": references}}
            return {key: {**root.attrs, "ch": references}}
        # 4 and 8: each resource nested in the nearest listed one above it; 8 is the target
        # without its attributes (still the one root element, TS-0004 7.2.1.2)
        top: dict[str, Any] = dict(root.attrs) if rcn == 4 else {}
        nodes: dict[str, dict[str, Any]] = {}
        for resource, anchor in entries:
            node = dict(resource.attrs)
            holder = top if anchor is None else nodes[anchor]
            holder.setdefault(resource.kind.key, []).append(node)
            nodes[resource.ri] = node
        return {key: top}


def _attribute_list(pc: Any, attribute: str | None) -> list[str] | None:
    """The attributes a partial retrieve names: ``{"m2m:atrl": [...]}`` as the content of the
    RETRIEVE (TS-0004 7.3.3.6 case 1) or a ``#attribute`` in its target (case 2)."""
    if attribute is not None:
        if not attribute or pc is not None:
            raise BadRequest("a '#attribute' target names one attribute, and no m2m:atrl")
        return [attribute]
    if pc is None:
        return None
    names = pc.get("m2m:atrl") if isinstance(pc, dict) and len(pc) == 1 else None
    if (
        not isinstance(names, list)
        or not names
        or len(names) > MAX_LIST
        or not all(isinstance(n, str) and n for n in names)
    ):
        raise BadRequest(
            "the content of a RETRIEVE may only be {'m2m:atrl': [attribute names]} (a partial "
            f"retrieve of 1 to {MAX_LIST} attributes)"
        )
    return names


def _drt(request: Request) -> int:
    drt = request.drt
    if drt is None:
        return 1
    if drt not in (1, 2):
        raise BadRequest("'drt' must be 1 (structured) or 2 (unstructured)")
    return drt

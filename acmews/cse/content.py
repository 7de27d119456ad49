"""What a response carries: the result content (``rcn`` 0-8) and discovery results."""

from __future__ import annotations

from typing import Any

from acmews.codes import ACOP
from acmews.cse.access import AccessControl
from acmews.cse.resource import Resource
from acmews.cse.store import IResourceReader
from acmews.errors import BadRequest, NotAcceptable, NotImplementedOp
from acmews.primitive import Request, is_int_not_bool

__all__ = ["Content"]

_RCNS = frozenset({0, 1, 2, 3, 4, 5, 6, 8})
#: resources one rcn 4/8 answer may hold, and resources one discovery may visit or return
MAX_TREE = 10_000
MAX_VISITED = 200_000
_FC_KEYS = frozenset({"fu", "ty", "lbl", "lim", "cra", "crb", "lvl"})


class Content:
    """Builds the ``pc`` of responses; children are shown only to who may RETRIEVE them."""

    def __init__(self, store: IResourceReader, access: AccessControl, admin: str) -> None:
        self._store = store
        self._access = access
        self._admin = admin

    @staticmethod
    def rcn(request: Request, default: int) -> int:
        """The request's ``rcn`` (4000 if unsupported), or ``default``."""
        rcn = request.rcn
        if rcn is None:
            return default
        if rcn not in _RCNS:
            raise BadRequest(f"result content (rcn) {rcn} is not supported for this operation")
        return rcn

    def _visible_children(self, resource: Resource, originator: str | None) -> list[Resource]:
        children = self._store.children(resource.ri)
        if originator == self._admin:
            return list(children)
        allowed = self._access.allowed
        return [c for c in children if allowed(originator, c, ACOP.RETRIEVE)]

    def _tree(
        self, resource: Resource, originator: str | None, budget: list[int] | None = None
    ) -> dict[str, Any]:
        """``resource`` with its visible subtree, at most :data:`MAX_TREE` resources in all
        (5207 beyond: the answer would be too large anyway). Iterative: no depth can exhaust
        the stack."""
        if budget is None:
            budget = [MAX_TREE]
        top = dict(resource.attrs)
        stack: list[tuple[Resource, dict[str, Any]]] = [(resource, top)]
        while stack:
            node, attrs = stack.pop()
            for child in self._visible_children(node, originator):
                budget[0] -= 1
                if budget[0] < 0:
                    raise NotAcceptable(
                        f"the answer would hold more than {MAX_TREE} resources: use rcn 5 or "
                        "6, or discovery with fc.lim"
                    )
                child_attrs = dict(child.attrs)
                attrs.setdefault(child.kind.key, []).append(child_attrs)
                stack.append((child, child_attrs))
        return top

    @staticmethod
    def _reference(resource: Resource) -> dict[str, Any]:
        return {"nm": resource.rn, "typ": resource.ty, "val": resource.srn}

    def content(self, resource: Resource, rcn: int, originator: str | None) -> Any:
        """The ``pc`` for ``resource`` with result content ``rcn``."""
        if rcn == 1:
            return resource.pc
        if rcn == 0:
            return None
        key = resource.kind.key
        if rcn == 2:
            return {"m2m:uri": resource.srn}
        if rcn == 3:
            return {"m2m:rce": {key: resource.attrs, "uri": resource.srn}}
        if rcn == 4:
            return {key: self._tree(resource, originator)}
        children = self._visible_children(resource, originator)
        if rcn == 5:
            return {key: {**resource.attrs, "ch": [self._reference(c) for c in children]}}
        if rcn == 6:
            return {"m2m:rrl": {"rrf": [self._reference(c) for c in children]}}
        grouped: dict[str, list[dict[str, Any]]] = {}  # rcn 8: the child resources only
        budget = [MAX_TREE - len(children)]
        if budget[0] < 0:
            raise NotAcceptable(
                f"the answer would hold more than {MAX_TREE} resources: use rcn 6, or "
                "discovery with fc.lim"
            )
        for child in children:
            grouped.setdefault(child.kind.key, []).append(self._tree(child, originator, budget))
        return grouped

    def discover(self, request: Request, root: Resource, fc: dict[str, Any]) -> dict[str, Any]:
        """The ``m2m:uril`` of a discovery (``fc.fu`` 1) below ``root``."""
        unknown = fc.keys() - _FC_KEYS
        if unknown:
            raise BadRequest(f"filter criteria {', '.join(sorted(unknown))} not supported")
        fu = fc.get("fu", 2)
        if fu == 2:
            raise NotImplementedOp("conditional retrieval (fc.fu 2) is not supported")
        if fu != 1:
            raise BadRequest("'fc.fu' must be 1 (discovery) or 2")
        tys = fc.get("ty")
        if tys is not None:
            tys = tys if isinstance(tys, list) else [tys]
            if not all(is_int_not_bool(t) for t in tys):
                raise BadRequest("'fc.ty' must be a resource type or a list of them")
        labels = fc.get("lbl")
        if labels is not None and (
            not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)
        ):
            raise BadRequest("'fc.lbl' must be a list of strings")
        lim = _fc_int(fc, "lim", 0)
        lvl = _fc_int(fc, "lvl", 1)
        cra = fc.get("cra")
        crb = fc.get("crb")
        for name, value in (("cra", cra), ("crb", crb)):
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"'fc.{name}' must be a timestamp")
        drt = request.drt if request.drt is not None else 1
        if drt not in (1, 2):
            raise BadRequest("'drt' must be 1 (structured) or 2 (unstructured)")
        originator = request.fr
        allowed = self._access.allowed
        found: list[str] = []
        label_set = frozenset(labels) if labels is not None else None
        type_set = frozenset(tys) if tys is not None else None

        def matches(r: Resource) -> bool:
            attrs = r.attrs
            if type_set is not None and r.ty not in type_set:
                return False
            if label_set is not None and label_set.isdisjoint(attrs.get("lbl", ())):
                return False
            if cra is not None and not attrs["ct"] > cra:
                return False
            if crb is not None and not attrs["ct"] < crb:
                return False
            return allowed(originator, r, ACOP.DISCOVERY)

        store = self._store
        # without a lim, one more than allowed is looked for: finding it means "too many"
        limit = MAX_TREE + 1 if lim is None else min(lim, MAX_TREE)
        visited = 0
        stack: list[tuple[Resource, int]] = [(c, 1) for c in reversed(store.children(root.ri))]
        while stack and len(found) < limit:
            resource, level = stack.pop()
            visited += 1
            if visited > MAX_VISITED:
                raise NotAcceptable(
                    f"the discovery would look at more than {MAX_VISITED} resources: narrow it "
                    "(fc.lvl, a deeper target)"
                )
            if matches(resource):
                found.append(resource.srn if drt == 1 else resource.ri)
            if lvl is None or level < lvl:
                stack.extend((c, level + 1) for c in reversed(store.children(resource.ri)))
        if len(found) > MAX_TREE:
            raise NotAcceptable(
                f"the discovery found more than {MAX_TREE} resources: narrow it with fc.lim"
            )
        return {"m2m:uril": found}


def _fc_int(fc: dict[str, Any], name: str, minimum: int) -> int | None:
    value = fc.get(name)
    if value is None:
        return None
    if not is_int_not_bool(value) or value < minimum:
        raise BadRequest(f"'fc.{name}' must be an integer >= {minimum}")
    return value

"""Access control: who may do what to a resource.

The admin may do anything. The creator of a resource may do anything to it and to its
subtree (an AE is its own creator). Anyone may RETRIEVE the CSEBase. Otherwise the nearest
``acpi`` (the resource's own, else its parent's, ...) decides: an ACP listed there grants the
operations of its ``pv`` rules to their ``acor`` originators. An ACP resource itself is judged
by its own ``pvs`` instead. (Which attributes hold those privileges is for the kinds to say:
:meth:`~acmews.cse.resource.ResourceKind.own_privileges` and ``granted_privileges``.)
"""

from __future__ import annotations

from typing import Any

from acmews.codes import ACOP
from acmews.cse.addressing import Addressing
from acmews.cse.resource import Resource
from acmews.errors import OriginatorHasNoPrivilege

__all__ = ["AccessControl"]


class AccessControl:
    def __init__(self, addressing: Addressing, admin: str) -> None:
        self._addressing = addressing
        self._admin = admin

    def check(self, originator: str | None, resource: Resource, acop: ACOP) -> None:
        """Raise 4103 unless ``originator`` may do ``acop`` to ``resource``."""
        if originator == self._admin:
            return
        if not self.allowed(originator, resource, acop):
            raise OriginatorHasNoPrivilege(
                f"originator {originator!r} has no {acop.name} privilege on {resource.srn!r}"
            )

    def allowed(self, originator: str | None, resource: Resource, acop: ACOP) -> bool:
        """Admin; the owner of the subtree; else the ACPs (nearest ``acpi``, or ``pvs``)."""
        if originator is None:
            return False
        if originator == self._admin:
            return True
        addressing = self._addressing
        base = addressing.base
        if resource is base and acop == ACOP.RETRIEVE:
            return True  # anyone may probe the CSEBase
        r: Resource | None = resource
        while r is not None and r is not base:
            if r.creator == originator or (
                r.kind.registrant and r.kind.originator_of(r) == originator
            ):
                return True
            r = addressing.parent(r)
        own = resource.kind.own_privileges(resource)
        if own is not None:
            return rules_allow(own, originator, acop)
        r = resource
        while r is not None:
            acpi = r.attrs.get("acpi")
            if acpi:
                for acp_id in acpi:
                    acp = addressing.find(acp_id)
                    if acp is None:
                        continue
                    granted = acp.kind.granted_privileges(acp)
                    if granted is not None and rules_allow(granted, originator, acop):
                        return True
                return False
            r = addressing.parent(r)
        return False


def rules_allow(privileges: dict[str, Any], originator: str, acop: ACOP) -> bool:
    """True if a rule of ``privileges`` (``{"acr": [...]}``) grants ``acop`` to ``originator``.

    An ``acor`` entry is an originator, ``*`` (anyone), or a pattern ending in ``*`` (a
    prefix: ``/id-mn/*`` names every originator forwarded by the CSE ``/id-mn``)."""
    bit = int(acop)  # int & int: an IntFlag operand would build a flag for every rule
    for rule in privileges.get("acr", ()):
        if not rule["acop"] & bit:
            continue
        for acor in rule["acor"]:
            if acor == originator or acor == "*":
                return True
            if acor.endswith("*") and originator.startswith(acor[:-1]):
                return True
    return False

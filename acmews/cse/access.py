"""Access control: who may do what to a resource.

The admin may do anything. The creator of a resource (an AE is its own creator) may do
anything to it and to its subtree. Anyone may RETRIEVE the CSEBase. Otherwise the nearest
``acpi`` (the resource's own, else its parent's, ...) decides: an ACP listed there grants the
operations of its ``pv`` rules to their ``acor`` originators. An ACP resource itself is judged
by its own ``pvs`` instead.
"""

from __future__ import annotations

from typing import Any

from acmews.codes import ACOP, ResourceType
from acmews.cse.addressing import Addressing
from acmews.cse.resource import Resource
from acmews.errors import OriginatorHasNoPrivilege

__all__ = ["AccessControl"]

_AE = ResourceType.AE
_ACP = ResourceType.ACP


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
            if r.creator == originator or (r.ty == _AE and r.ri == originator):
                return True
            r = addressing.parent(r)
        if resource.ty == _ACP:
            return rules_allow(resource.attrs["pvs"], originator, acop)
        r = resource
        while r is not None:
            acpi = r.attrs.get("acpi")
            if acpi:
                for acp_id in acpi:
                    acp = addressing.find(acp_id)
                    if (
                        acp is not None
                        and acp.ty == _ACP
                        and rules_allow(acp.attrs["pv"], originator, acop)
                    ):
                        return True
                return False
            r = addressing.parent(r)
        return False


def rules_allow(privileges: dict[str, Any], originator: str, acop: ACOP) -> bool:
    """True if a rule of ``privileges`` (``{"acr": [...]}``) grants ``acop`` to ``originator``."""
    bit = int(acop)  # int & int: an IntFlag operand would build a flag for every rule
    for rule in privileges.get("acr", ()):
        if rule["acop"] & bit and ("*" in rule["acor"] or originator in rule["acor"]):
            return True
    return False

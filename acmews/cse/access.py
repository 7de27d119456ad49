"""Access control: who may do what to a resource.

The admin may do anything. Anyone may RETRIEVE the CSEBase. An ACP resource is judged by its
own ``pvs`` alone (TS-0001 9.6.2: its selfPrivileges), whoever created it or owns the subtree
it is in. Otherwise the creator of a resource may do anything to it and to its subtree (an AE
is its own creator), and else the nearest ``acpi`` (the resource's own, else its parent's,
...) decides: an ACP listed there grants the operations of its ``pv`` rules to their
``acor`` originators. (Which attributes hold those privileges is for the kinds to say:
:meth:`~acmews.cse.resource.ResourceKind.own_privileges` and ``granted_privileges``.)

A rule may also narrow what it grants to a context (time windows, IP addresses), to resource
types, to attributes or to authenticated requests (:mod:`acmews.cse.rules`). Those are judged
against the request being handled, which the CSE sets in :attr:`AccessControl.request` and
:attr:`AccessControl.connection` while it handles one; a check made outside a request (none
set) meets no such rule.

``acpi`` itself follows TS-0001 9.6.1.3.2 (see :meth:`AccessControl.check_acpi_update`): it is
updated alone, by an originator with the UPDATE privilege in the ``pvs`` of an ACP it lists.
It names existing ACPs only (:meth:`AccessControl.validate_acpi`: 4000 otherwise, as the
reference implementation answers).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from twisted.internet.interfaces import IReactorTime

from acmews.codes import ACOP, Operation, ResourceType
from acmews.cse.addressing import Addressing
from acmews.cse.resource import Resource
from acmews.cse.rules import in_networks, parse_peer_address, parse_schedule, schedule_matches
from acmews.errors import BadRequest, OriginatorHasNoPrivilege
from acmews.interfaces import IConnection
from acmews.primitive import Request

__all__ = ["AccessControl"]

_ACP = int(ResourceType.ACP)


class AccessControl:
    def __init__(self, addressing: Addressing, admin: str, clock: IReactorTime | None = None):
        self._addressing = addressing
        self._admin = admin
        self._clock = clock
        #: the request being handled and the connection it came on (set by the CSE while it
        #: handles one): what the contexts, object details and attributes of a rule judge
        self.request: Request | None = None
        self.connection: IConnection | None = None

    def check(self, originator: str | None, resource: Resource, acop: ACOP) -> None:
        """Raise 4103 unless ``originator`` may do ``acop`` to ``resource``."""
        if originator == self._admin:
            return
        if not self.allowed(originator, resource, acop):
            raise OriginatorHasNoPrivilege(
                f"originator {originator!r} has no {acop.name} privilege on {resource.srn!r}"
            )

    def allowed(self, originator: str | None, resource: Resource, acop: ACOP) -> bool:
        """Admin; an ACP's own ``pvs``; the owner of the subtree; else the nearest ``acpi``."""
        if originator is None:
            return False
        if originator == self._admin:
            return True
        addressing = self._addressing
        base = addressing.base
        if resource is base and acop == ACOP.RETRIEVE:
            return True  # anyone may probe the CSEBase
        own = resource.kind.own_privileges(resource)
        if own is not None:
            # an ACP: its selfPrivileges alone, whoever created it (TS-0001 9.6.2)
            return self.rules_allow(own, originator, acop, resource)
        r: Resource | None = resource
        while r is not None and r is not base:
            if r.creator == originator or (
                r.kind.registrant and r.kind.originator_of(r) == originator
            ):
                return True
            r = addressing.parent(r)
        r = resource
        while r is not None:
            acpi = r.attrs.get("acpi")
            if acpi:
                return self._granted(acpi, originator, acop, resource)
            r = addressing.parent(r)
        return False

    def _granted(
        self, acpi: list[str], originator: str, acop: ACOP, resource: Resource, own: bool = False
    ) -> bool:
        """Does an ACP of ``acpi`` grant ``acop`` on ``resource``: its ``pv`` (``pvs`` if
        ``own``)? ACPs that are gone grant nothing."""
        find = self._addressing.find
        for acp_id in acpi:
            acp = find(acp_id)
            if acp is None:
                continue
            kind = acp.kind
            granted = kind.own_privileges(acp) if own else kind.granted_privileges(acp)
            if granted is not None and self.rules_allow(granted, originator, acop, resource):
                return True
        return False

    def rules_allow(
        self, privileges: Mapping[str, Any], originator: str, acop: ACOP, resource: Resource
    ) -> bool:
        """True if a rule of ``privileges`` (``{"acr": [...]}``) grants ``acop`` on
        ``resource`` to ``originator``.

        An ``acor`` entry is an originator, ``*`` (anyone), or a pattern ending in ``*`` (a
        prefix: ``/id-mn/*`` names every originator forwarded by the CSE ``/id-mn``)."""
        bit = int(acop)  # int & int: an IntFlag operand would build a flag for every rule
        for rule in privileges.get("acr", ()):
            if not rule["acop"] & bit:
                continue
            for acor in rule["acor"]:
                if (
                    acor == originator
                    or acor == "*"
                    or (acor.endswith("*") and originator.startswith(acor[:-1]))
                ):
                    # most rules are just acor and acop: the rest is looked at only if there
                    if len(rule) == 2 or self._applies(rule, bit, resource):
                        return True
                    break
        return False

    # --- the optional parts of a rule (acmews.cse.rules) --------------------------------------

    def _applies(self, rule: Mapping[str, Any], bit: int, resource: Resource) -> bool:
        """Does the request being handled meet the ``acco``, ``acod``, ``aca`` and ``acaf`` of
        ``rule`` (on ``resource``, for the operation ``bit``)?"""
        request = self.request
        acaf = rule.get("acaf")
        if acaf and not self._authenticated():
            return False
        acod = rule.get("acod")
        if acod is not None and not any(self._describes(d, bit, resource) for d in acod):
            return False
        acco = rule.get("acco")
        if acco is not None and not any(self._in_context(c) for c in acco):
            return False
        aca = rule.get("aca")
        if aca is not None:
            if bit in (ACOP.CREATE, ACOP.UPDATE):
                if request is None or not isinstance(request.pc, dict):
                    return False
                body = next(iter(request.pc.values()), None)
                touched = body.keys() if isinstance(body, dict) else ()
            else:
                touched = resource.attrs.keys()
            if not set(touched) <= set(aca):
                return False
        return True

    def _authenticated(self) -> bool:
        """Did the request come over a connection that authenticated (a credential or a
        certificate)?"""
        connection = self.connection
        if connection is None:
            return False
        authorization = connection.authorization
        return authorization.owner is not None or authorization.verified

    def _describes(self, details: Mapping[str, Any], bit: int, resource: Resource) -> bool:
        """An ``acod`` entry: the target's type ``ty``; for a CREATE, the type created among
        ``chty``; ``spty`` (a specialization: none here) never."""
        if "spty" in details:
            return False
        ty = details.get("ty")
        if ty is not None and ty != resource.ty:
            return False
        chty = details.get("chty")
        if chty is not None:
            request = self.request
            if bit != ACOP.CREATE or request is None or request.op != Operation.CREATE:
                return False
            return request.ty in chty
        return True

    def _in_context(self, context: Mapping[str, Any]) -> bool:
        """An ``acco`` entry: the request meets each part it holds (``aclr``: never)."""
        if "aclr" in context:
            return False  # where an originator is cannot be known here
        actw = context.get("actw")
        if actw is not None:
            clock = self._clock
            now = clock.seconds() if clock is not None else time.time()
            if not any(schedule_matches(parse_schedule(entry), now) for entry in actw):
                return False
        acip = context.get("acip")
        if acip is not None:
            connection = self.connection
            address = None if connection is None else parse_peer_address(connection.peer)
            if address is None or not in_networks(address, acip):
                return False
        return True

    # --- acpi (TS-0001 9.6.1.3.2) -------------------------------------------------------------

    def validate_acpi(self, acpi: list[str]) -> None:
        """4000 unless every entry of ``acpi`` names an existing ACP."""
        find = self._addressing.find
        for acp_id in acpi:
            acp = find(acp_id)
            if acp is None:
                raise BadRequest(f"acpi names {acp_id!r}: no such accessControlPolicy")
            if acp.ty != _ACP:
                raise BadRequest(f"acpi names {acp_id!r}, which is not an accessControlPolicy")

    def check_acpi_update(
        self, originator: str | None, resource: Resource, body: Mapping[str, Any]
    ) -> None:
        """May ``originator`` UPDATE ``body`` (it holds ``acpi``) of ``resource``? 4000 with
        other attributes; else the UPDATE privilege in the ``pvs`` of an ACP the current
        ``acpi`` lists, or, without one, the ordinary UPDATE privilege (4103)."""
        if len(body) > 1:
            raise BadRequest("acpi must be updated alone, without other attributes")
        acpi = resource.attrs.get("acpi")
        if not acpi or originator == self._admin:
            self.check(originator, resource, ACOP.UPDATE)
            return
        if originator is None or not self._granted(
            acpi, originator, ACOP.UPDATE, resource, own=True
        ):
            raise OriginatorHasNoPrivilege(
                f"originator {originator!r} has no UPDATE privilege in the selfPrivileges "
                f"of the accessControlPolicies {resource.srn!r} lists (acpi)"
            )

"""``<timeSeries>`` (ty 29, TS-0001 9.6.36) and ``<timeSeriesInstance>`` (ty 30, TS-0001
9.6.37): periodic data, each instance stamped with its ``dgt`` (dataGenerationTime).

A timeSeries is a container whose instances carry a mandatory ``dgt``, unique within the
series (a second instance with the same ``dgt`` is refused with 4000, as the reference
implementation does). It keeps ``cni``/``cbs`` and its ``mni``/``mbs`` limits as a container
does (the oldest go first), ``mia`` (maxInstanceAge, seconds) bounds each instance's ``et``,
and ``la``/``ol`` name its latest and oldest instance.

With ``mdd`` (missingDataDetect) true and ``pei`` (periodicInterval, milliseconds) set, the
CSE expects an instance every ``pei``: after one with ``dgt`` t, the next is due with a
``dgt`` of t + pei, give or take ``peid`` (periodicIntervalDelta, milliseconds, by default
half of ``pei``). ``mdt`` (the CSE's, read-only) is when that next one is overdue:
t + pei + peid. Should no instance come by then, t + pei is a missing data point: it goes
into ``mdlt`` (missingDataList, the latest ``mdn`` kept, 10 by default), ``mdc``
(missingDataCurrentNr) counts the list, and ``mdt`` moves a period on. Everything this needs
is in the stored series, so :class:`TimeSeriesMonitor` (while started, like the expiry
timer) finds it all again at start and catches up on the periods missed while it was down.

Subscriptions of a timeSeries with ``enc.net`` 8 (missingData) and ``enc.md`` ``{num, dur}``
hear of it (nct 5, an ``m2m:tsn`` with ``mdc`` and ``mdlt``) once at least ``num`` missing
data points lie within the last ``dur``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from acmews.codes import NotificationEventType, ResourceType
from acmews.cse.kinds import ContainerKind, InstanceKind
from acmews.cse.resource import (
    Changes,
    CSEServices,
    Resource,
    make_kind,
    register_kind,
    v_any,
    v_bool,
    v_content_info,
    v_nonneg_int,
    v_pos_int,
    v_str,
    v_timestamp,
)
from acmews.cse.store import Batch, IResourceReader
from acmews.errors import BadRequest
from acmews.logs import Logger
from acmews.timestamps import Timestamps, parse_timestamp

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

__all__ = [
    "TIME_SERIES",
    "TIME_SERIES_INSTANCE",
    "TimeSeriesInstanceKind",
    "TimeSeriesKind",
    "TimeSeriesMonitor",
]

_R = ResourceType
_TS = _R.TS
_TSI = _R.TSI
#: ``mdn`` when ``mdd`` is set without it
DEFAULT_MDN = 10
#: periods one check catches up on at most (a CSE down for long): only the latest ``mdn``
#: are kept anyway; beyond it the series starts over from now
CATCH_UP = 1000
_ts = Timestamps()

log = Logger()


def _check_detection(attrs: dict[str, Any]) -> None:
    """``mdd`` needs ``pei``; complete ``peid``, ``mdn``, ``mdlt`` and ``mdc`` (``attrs``:
    the series as it will be, changed in place)."""
    if attrs.get("mdd"):
        pei = attrs.get("pei")
        if pei is None:
            raise BadRequest("missingDataDetect (mdd) needs a periodicInterval (pei)")
        attrs.setdefault("peid", pei // 2)
        attrs.setdefault("mdn", DEFAULT_MDN)
        attrs.setdefault("mdlt", [])
        attrs.setdefault("mdc", 0)


class TimeSeriesKind(ContainerKind):
    """A timeSeries: a container of timeSeriesInstances with missing-data detection."""

    __slots__ = ()
    instance_ty = int(_TSI)

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        super().prepare_create(cse, parent, attrs)
        _check_detection(attrs)

    def prepare_update(
        self, cse: CSEServices, resource: Resource, changes: dict[str, Any]
    ) -> None:
        super().prepare_update(cse, resource, changes)
        merged = {**resource.attrs, **changes}
        for name, value in changes.items():
            if value is None:
                del merged[name]
        if changes.get("pei") is not None and "peid" not in changes:
            merged.pop("peid", None)  # its default follows the new pei
        if "pei" in changes or "mdd" in changes:
            merged.pop("mdt", None)  # the detection starts again with the next instance
        _check_detection(merged)
        for name in ("peid", "mdn", "mdlt", "mdc", "mdt"):
            if merged.get(name) != resource.attrs.get(name):
                changes[name] = merged.get(name)
        mdn = merged.get("mdn")
        mdlt = merged.get("mdlt")
        if mdn is not None and mdlt is not None and len(mdlt) > mdn:
            changes["mdlt"] = mdlt = mdlt[len(mdlt) - mdn :]
            changes["mdc"] = len(mdlt)


class TimeSeriesInstanceKind(InstanceKind):
    """A timeSeriesInstance: its ``dgt`` is unique in its series; ``mia`` bounds its ``et``;
    it tells the series when the next one is due."""

    __slots__ = ()

    def prepare_create(self, cse: CSEServices, parent: Resource, attrs: dict[str, Any]) -> None:
        dgt = attrs["dgt"]
        try:
            parse_timestamp(dgt)
        except ValueError:
            raise BadRequest(f"attribute 'dgt' must be a valid time: {dgt!r}") from None
        for sibling in cse.store.children(parent.ri, _TSI):
            if sibling.attrs["dgt"] == dgt:
                raise BadRequest(
                    f"{parent.srn!r} has a timeSeriesInstance with dgt {dgt} already "
                    f"({sibling.rn!r})"
                )
        super().prepare_create(cse, parent, attrs)

    def created(
        self, cse: CSEServices, batch: Changes, resource: Resource, parent: Resource
    ) -> None:
        mia = parent.attrs.get("mia")
        if mia is not None:
            latest = _ts.format(parse_timestamp(resource.attrs["ct"]) + mia)
            if latest < resource.attrs["et"]:
                resource.replace({"et": latest})
        super().created(cse, batch, resource, parent)
        pattrs = parent.attrs
        if pattrs.get("mdd") and pattrs.get("pei"):
            due = parse_timestamp(resource.attrs["dgt"]) + (pattrs["pei"] + pattrs["peid"]) / 1e3
            mdt = pattrs.get("mdt")
            if mdt is None or due > parse_timestamp(mdt):  # (a late instance moves nothing)
                parent.replace({"mdt": _ts.format(due)})
                batch.update(parent)


def detect(series: Resource, now: float) -> list[str]:
    """The missing data points of ``series`` up to ``now`` (its ``mdt`` passed): recorded in
    ``mdlt``/``mdc`` with ``mdt`` moved on (``series`` replaced, to be stored); the new
    points, oldest first."""
    attrs = series.attrs
    mdt = attrs.get("mdt")
    if not attrs.get("mdd") or not attrs.get("pei") or mdt is None:
        return []
    period = attrs["pei"] / 1e3
    delta = attrs["peid"] / 1e3
    due = parse_timestamp(mdt)
    found: list[str] = []
    while due <= now and len(found) < CATCH_UP:
        found.append(_ts.format(due - delta))
        due += period
    if due <= now:  # down for very long: start over from now
        due = now + period + delta
    mdn = attrs.get("mdn", DEFAULT_MDN)
    mdlt = [*attrs.get("mdlt", ()), *found][-mdn:] if mdn else []
    series.replace({"mdlt": mdlt, "mdc": len(mdlt), "mdt": _ts.format(due)})
    return found


#: the timeSeries kind, registered with the others
TIME_SERIES = register_kind(
    make_kind(
        TimeSeriesKind,
        _TS,
        "ts",
        "timeSeries",
        {
            "mni": v_nonneg_int,
            "mbs": v_nonneg_int,
            "mia": v_nonneg_int,
            "pei": v_pos_int,
            "peid": v_nonneg_int,
            "mdd": v_bool,
            "mdn": v_nonneg_int,
            "cnf": v_content_info,
            "or": v_str,
            "disr": v_bool,
        },
        frozenset(),
        {"lbl", "acpi", "et", "mni", "mbs", "mia", "pei", "peid", "mdd", "mdn", "or", "disr"},
        {_R.TSI, _R.SUB},
        ("rn", "lbl", "acpi", "et", "cr"),
        parents={_R.CSEBASE, _R.AE, _R.CSR},
    )
)
#: the timeSeriesInstance kind, registered with the others
TIME_SERIES_INSTANCE = register_kind(
    make_kind(
        TimeSeriesInstanceKind,
        _TSI,
        "tsi",
        "timeSeriesInstance",
        {"dgt": v_timestamp, "con": v_any, "sqn": v_nonneg_int},
        frozenset({"dgt", "con"}),
        set(),
        set(),
        ("rn", "lbl", "et", "cr"),
    )
)


class TimeSeriesMonitor:
    """A timer per timeSeries with missing-data detection, for its ``mdt``, while started.

    The timers are derived from the stored series alone: :meth:`start` arms one for each,
    :meth:`track` re-arms those a batch changed. A timer that fires records the missing
    data (:func:`detect`) and notifies (``event``, net 8) in one batch of its own.
    """

    def __init__(
        self,
        event: Callable[[Batch, Resource, NotificationEventType, Resource], None],
        clock: IReactorTime,
        store: IResourceReader,
        apply: Callable[[Batch], Deferred[None] | None],
        resources: Callable[[], Iterable[Resource]],
    ) -> None:
        self._event = event
        self._clock = clock
        self._store = store
        self._apply = apply
        self._resources = resources
        self._calls: dict[str, IDelayedCall] = {}
        #: timers are kept (a CSE that is not started has none)
        self.running = False

    def __len__(self) -> int:
        """How many series have a timer."""
        return len(self._calls)

    def start(self) -> None:
        """Arm a timer for every series whose ``mdt`` is set: one that passed while the CSE
        was down fires in the first turn of the reactor and catches up."""
        self.running = True
        for resource in self._resources():
            if resource.kind is TIME_SERIES:
                self._arm(resource)

    def stop(self) -> None:
        self.running = False
        for call in self._calls.values():
            if call.active():
                call.cancel()
        self._calls.clear()

    def track(self, batch: Batch) -> None:
        """Re-arm the timers of the series ``batch`` added or changed (just applied)."""
        for resource in batch.added:
            if resource.kind is TIME_SERIES:
                self._arm(resource)
        for resource in batch.updated:
            if resource.kind is TIME_SERIES:
                self._arm(resource)

    def _arm(self, series: Resource) -> None:
        ri = series.ri
        call = self._calls.get(ri)
        mdt = series.attrs.get("mdt")
        if mdt is None or not series.attrs.get("mdd"):
            if call is not None:
                del self._calls[ri]
                if call.active():
                    call.cancel()
            return
        delay = max(0.0, parse_timestamp(mdt) - self._clock.seconds())
        if not math.isfinite(delay):
            return
        if call is not None and call.active():
            call.reset(delay)
        else:
            self._calls[ri] = self._clock.callLater(delay, self._fire, ri)

    def _fire(self, ri: str) -> None:
        self._calls.pop(ri, None)
        series = self._store.get(ri)
        if series is None or series.kind is not TIME_SERIES:
            return  # deleted meanwhile
        now = self._clock.seconds()
        mdt = series.attrs.get("mdt")
        if mdt is not None and parse_timestamp(mdt) > now:
            self._arm(series)  # moved on by an instance since
            return
        batch = Batch(self._store)
        try:
            found = detect(series, now)
            if found:
                log.debug("{series}: {count} data missing", series=series.srn, count=len(found))
                batch.update(series)
                self._event(batch, series, NotificationEventType.MISSING_DATA, series)
        finally:
            done = self._apply(batch)
        if done is not None:
            done.addErrback(_not_recorded)
        if not self.running:
            return
        self._arm(series)


def _not_recorded(failure: Failure) -> None:
    log.failure("could not record missing data", failure)

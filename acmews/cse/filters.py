"""Filter criteria (``fc``, TS-0004 7.3.3.17): the conditions a resource is tested against and
how the matches are used (``fu``, ``lim``, ``ofst``, ``lvl``).

:func:`parse_filter` checks a request's ``fc`` once (4000 for a malformed element, 5001 for
one TS-0004 defines but this CSE does not evaluate); the :class:`Filter` it returns then tests
resources without further checks. Conditions of the same kind are ORed (any label, any type);
different kinds are combined by ``fo``: AND (1, the default) or OR (2). A resource without the
attribute a condition tests (a ``cs`` on a container, say) does not satisfy it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from acmews.cse.resource import KINDS, MAX_LIST, MAX_LIST_ITEM, Resource, v_timestamp
from acmews.errors import BadRequest, NotImplementedOp
from acmews.primitive import is_int_not_bool

__all__ = ["CONDITIONAL_RETRIEVAL", "DISCOVERY", "Filter", "parse_filter"]

#: ``fu`` (m2m:filterUsage)
DISCOVERY = 1
CONDITIONAL_RETRIEVAL = 2
#: ``fo`` (m2m:filterOperation)
AND = 1
OR = 2

Condition = Callable[[Resource], bool]

#: elements TS-0004 defines that this CSE does not evaluate: 5001 (TS-0004 7.3.2.1)
_UNSUPPORTED = frozenset(
    {"clbl", "palb", "chty", "pty", "catr", "patr", "cfs", "cfq", "smf", "arp", "gmty", "geom"}
    | {"gsf"}
)
#: attributes an attribute condition may not name: other conditions test them (7.3.3.17.9)
_NOT_BY_ATTRIBUTE = frozenset({"ct", "lt", "st", "et", "lbl", "ty", "cs", "cnf"})
#: attributes the CSE sets (no kind lets an originator set them), which a condition may name
_CSE_SET = frozenset({"ri", "pi", "cr", "cni", "cbs", "aei", "csi", "cst", "srv", "cstn"})
#: time intervals and number ranges: (lower bound, upper bound, the attribute they test);
#: a match is lower <= value < upper (7.3.3.17.1 to 7.3.3.17.4, 7.3.3.17.7)
_RANGES = (
    ("cra", "crb", "ct"),
    ("ms", "us", "lt"),
    ("stb", "sts", "st"),
    ("exa", "exb", "et"),
    ("sza", "szb", "cs"),
)
_TIMES = frozenset({"cra", "crb", "ms", "us", "exa", "exb"})
_HANDLING = frozenset({"fu", "fo", "lim", "ofst", "lvl"})
_KNOWN = (
    _HANDLING
    | {bound for low, high, _ in _RANGES for bound in (low, high)}
    | {"lbl", "lbq", "ty", "cty", "atr"}
)


@dataclass(frozen=True, slots=True)
class Filter:
    """A parsed ``fc``: its conditions, and how to use what matches them."""

    #: 1 discovery, 2 conditional retrieval (the default)
    fu: int
    conditions: tuple[Condition, ...]
    #: combine the conditions with OR (``fo`` 2) instead of AND
    any_of: bool
    #: at most this many resources (None: the CSE's own bound)
    lim: int | None
    #: the first resource to return, counted from 1
    ofst: int
    #: levels below the target to look at (None: all)
    lvl: int | None

    def matches(self, resource: Resource) -> bool:
        conditions = self.conditions
        if self.any_of and conditions:
            return any(c(resource) for c in conditions)
        return all(c(resource) for c in conditions)


def parse_filter(fc: Mapping[Any, Any]) -> Filter:
    """The :class:`Filter` of the filter criteria ``fc``; 4000 (5001) for what is not one."""
    fu = fc.get("fu", CONDITIONAL_RETRIEVAL)
    if fu in (3, 4) and is_int_not_bool(fu):
        raise NotImplementedOp(f"filter usage (fc.fu) {fu} is not supported: use 1 or 2")
    if fu not in (DISCOVERY, CONDITIONAL_RETRIEVAL) or not is_int_not_bool(fu):
        raise BadRequest("'fc.fu' must be 1 (discovery) or 2 (conditional retrieval)")
    fo = fc.get("fo", AND)
    if fo not in (AND, OR) or not is_int_not_bool(fo):
        raise BadRequest("'fc.fo' must be 1 (AND) or 2 (OR)")
    conditions: list[Condition] = []
    for low, high, attribute in _RANGES:
        if low in fc or high in fc:
            conditions.append(_range(attribute, _bound(fc, low), _bound(fc, high)))
    labels = fc.get("lbl")
    if labels is not None:
        wanted = frozenset(_strings(labels, "lbl"))
        conditions.append(lambda r: not wanted.isdisjoint(r.attrs.get("lbl") or ()))
    if "lbq" in fc:
        expressions = [_label_expression(e) for e in _strings(fc["lbq"], "lbq")]
        conditions.append(_labels_query(expressions))
    if "ty" in fc:
        types = frozenset(_types(fc["ty"]))
        conditions.append(lambda r: r.ty in types)
    if "cty" in fc:
        conditions.append(_content_type(frozenset(_strings(fc["cty"], "cty"))))
    if "atr" in fc:
        conditions.append(_any_attribute(_attribute_elements(fc["atr"])))
    unknown = []
    for name in fc:
        if name in _KNOWN:
            continue
        if name in _UNSUPPORTED:
            raise NotImplementedOp(f"the filter criteria element fc.{name} is not supported")
        if isinstance(name, str) and name not in _NOT_BY_ATTRIBUTE and _is_attribute(name):
            # fc.<attribute>: an attribute condition (as the reference implementations take
            # it, from HTTP's query parameters); each attribute named is a condition of its own
            conditions.append(_attribute(name, _value_test(fc[name])))
        else:
            unknown.append(str(name))
    if unknown:
        raise BadRequest(f"unknown filter criteria element(s): {', '.join(sorted(unknown))}")
    return Filter(
        fu,
        tuple(conditions),
        fo == OR,
        _count(fc, "lim", 0),
        _count(fc, "ofst", 1) or 1,
        _count(fc, "lvl", 1),
    )


def _count(fc: Mapping[Any, Any], name: str, minimum: int) -> int | None:
    value = fc.get(name)
    if value is None:
        return None
    if not is_int_not_bool(value) or value < minimum:
        raise BadRequest(f"'fc.{name}' must be an integer >= {minimum}")
    return value


def _bound(fc: Mapping[Any, Any], name: str) -> Any:
    """A bound of a range: a timestamp (in the form ``ct`` has, to compare as text) or a
    non-negative integer."""
    value = fc.get(name)
    if value is None:
        return None
    if name in _TIMES:
        main, _, fraction = v_timestamp(f"fc.{name}", value).partition(",")
        return f"{main},{fraction.ljust(6, '0')}"
    if not is_int_not_bool(value) or value < 0:
        raise BadRequest(f"'fc.{name}' must be a non-negative integer")
    return value


def _range(attribute: str, low: Any, high: Any) -> Condition:
    kind = type(low if low is not None else high)
    timestamp = kind is str

    def test(r: Resource) -> bool:
        value: Any = r.attrs.get(attribute)
        if type(value) is not kind:
            return False
        if timestamp and len(value) != 22:  # an et given without all six fraction digits
            main, _, fraction = value.partition(",")
            value = f"{main},{fraction.ljust(6, '0')}"
        return (low is None or low <= value) and (high is None or value < high)

    return test


def _strings(value: Any, name: str) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or len(value) > MAX_LIST
        or not all(isinstance(v, str) and len(v) <= MAX_LIST_ITEM for v in value)
    ):
        raise BadRequest(
            f"'fc.{name}' must be a list of 1 to {MAX_LIST} strings (of at most "
            f"{MAX_LIST_ITEM} characters)"
        )
    return value


def _types(value: Any) -> list[int]:
    types = value if isinstance(value, list) else [value]
    if not types or len(types) > MAX_LIST or not all(is_int_not_bool(t) for t in types):
        raise BadRequest("'fc.ty' must be a resource type or a list of them")
    return types


def _content_type(types: frozenset[str]) -> Condition:
    """``cty`` against the typeOfContent of ``cnf`` (``type/subtype:encoding``), 7.3.3.17.8;
    the whole ``cnf`` matches too."""

    def test(r: Resource) -> bool:
        cnf = r.attrs.get("cnf")
        return isinstance(cnf, str) and (cnf in types or cnf.partition(":")[0] in types)

    return test


# --- labelsQuery (7.3.3.17.16) ----------------------------------------------------------------

#: labels as a key -> values table (a key-only label has no value)
Labels = dict[str, set[str]]
LabelTest = Callable[[Labels], bool]


def _labels(r: Resource) -> Labels:
    table: Labels = {}
    for label in r.attrs.get("lbl") or ():
        key, colon, value = label.partition(":")
        values = table.setdefault(key, set())
        if colon:
            values.add(value)
    return table


def _labels_query(tests: Sequence[LabelTest]) -> Condition:
    def test(r: Resource) -> bool:
        table = _labels(r)
        return any(expression(table) for expression in tests)

    return test


def _label_expression(expression: str) -> LabelTest:
    """One expression: ``key``, ``NT key``, ``key:value``, ``key EQ value``, ``key NE
    value``, ``key IN (v1, v2)`` or ``key NI (v1, v2)``."""
    words = expression.split(None, 2)
    if len(words) == 2 and words[0] == "NT":
        absent = words[1]
        return lambda table: absent not in table
    if len(words) == 3 and words[1] in ("EQ", "NE", "IN", "NI"):
        key, operator, rest = words
        if operator in ("EQ", "NE"):
            values = frozenset({rest.strip()})
        else:
            rest = rest.strip()
            if not (rest.startswith("(") and rest.endswith(")")):
                raise BadRequest(f"'fc.lbq': {operator} takes a list of values: {expression!r}")
            values = frozenset(v.strip() for v in rest[1:-1].split(","))
        if "" in values:
            raise BadRequest(f"'fc.lbq': an empty value in {expression!r}")
        if operator in ("EQ", "IN"):
            return lambda table: not values.isdisjoint(table.get(key, ()))
        # NE, NI: the key has values, and none of them is one of these
        return lambda table: bool(table.get(key)) and values.isdisjoint(table[key])
    if len(words) == 1:
        key, colon, value = words[0].partition(":")
        if key and colon and value:
            return lambda table: value in table.get(key, ())
        if key and not colon:
            return lambda table: key in table
    raise BadRequest(f"'fc.lbq': not a labels query expression: {expression!r}")


# --- attribute conditions (7.3.3.17.9) --------------------------------------------------------

ValueTest = Callable[[Any], bool]


def _is_attribute(name: str) -> bool:
    """Is ``name`` the short name of an attribute of some resource type known here?"""
    return name in _CSE_SET or any(name in kind.attributes for kind in KINDS.values())


def _attribute_elements(value: Any) -> list[tuple[str, ValueTest]]:
    """``atr``: a list of ``{"nm": name, "val": value}``."""
    if not isinstance(value, list) or not value or len(value) > MAX_LIST:
        raise BadRequest(f"'fc.atr' must be a list of 1 to {MAX_LIST} {{nm, val}} objects")
    elements = []
    for element in value:
        if not isinstance(element, dict) or set(element) != {"nm", "val"}:
            raise BadRequest("each 'fc.atr' element must have exactly 'nm' and 'val'")
        name = element["nm"]
        if not isinstance(name, str) or not name:
            raise BadRequest("'fc.atr.nm' must be an attribute name")
        if name in _NOT_BY_ATTRIBUTE:
            raise BadRequest(
                f"'fc.atr' may not test {name!r}: other filter criteria do (TS-0004 7.3.3.17.9)"
            )
        elements.append((name, _value_test(element["val"])))
    return elements


def _any_attribute(elements: list[tuple[str, ValueTest]]) -> Condition:
    def test(r: Resource) -> bool:
        attrs = r.attrs
        return any(name in attrs and match(attrs[name]) for name, match in elements)

    return test


def _attribute(name: str, match: ValueTest) -> Condition:
    return lambda r: name in r.attrs and match(r.attrs[name])


def _text(value: Any) -> str | None:
    """A scalar as text (as it would be in an HTTP query), None for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def _value_test(wanted: Any) -> ValueTest:
    """Does an attribute's value match ``wanted``? Equal values, or equal as text (``5`` and
    ``"5"``); a string with ``*`` is a pattern (``*`` matches any characters, 7.3.3.17.9); an
    element of a list attribute matching is enough."""
    if isinstance(wanted, str) and "*" in wanted:
        if len(wanted) > MAX_LIST_ITEM:
            raise BadRequest(f"an attribute pattern may be at most {MAX_LIST_ITEM} characters")
        glob = _glob(wanted)

        def matches_pattern(actual: Any) -> bool:
            if isinstance(actual, list):
                return any(matches_pattern(a) for a in actual)
            text = _text(actual)
            return text is not None and glob(text)

        return matches_pattern
    wanted_text = _text(wanted)

    def matches(actual: Any) -> bool:
        if type(actual) is type(wanted):
            return bool(actual == wanted)
        if isinstance(actual, list):
            return any(matches(a) for a in actual)
        return wanted_text is not None and _text(actual) == wanted_text

    return matches


def _glob(pattern: str) -> Callable[[str], bool]:
    """A matcher for ``pattern`` where ``*`` stands for any characters: linear, whatever the
    pattern (no regular expression that could backtrack)."""
    first, *middle, last = pattern.split("*")
    shortest = len(first) + len(last)

    def match(text: str) -> bool:
        if len(text) < shortest or not text.startswith(first) or not text.endswith(last):
            return False
        position, end = len(first), len(text) - len(last)
        for part in middle:
            found = text.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
        return True

    return match

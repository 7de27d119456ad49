"""The flexContainer specializations the CSE knows from the start: a few common ModuleClasses
of TS-0023 (the Smart Device Template), as data.

Each definition is a mapping::

    {
        "name": "binarySwitch",                     # the ModuleClass (for messages)
        "short": "cod:binSh",                       # the resource's key in a pc
        "cnd": "org.onem2m.common.moduleclass.binarySwitch",   # its containerDefinition
        "attributes": {                             # its custom attributes, by short name
            "powerSe": {"type": "boolean", "mandatory": True},
        },
    }

An attribute's ``type`` is ``boolean``, ``integer``, ``float`` (an integer is a float too),
``string`` or ``any``; ``min``/``max`` bound a number, ``values`` lists the ones allowed,
``mandatory`` makes it required at CREATE. More are added with
:func:`acmews.cse.flexcontainer.register_specialization` (one such mapping each), before the
CSE is started: a resource whose ``cnd`` names a registered definition is validated against it
and keyed by its ``short`` name; any other ``cnd`` makes a generic ``m2m:fcnt`` whose custom
attributes are stored as given.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MODULE_CLASSES"]

_COD = "org.onem2m.common.moduleclass."

#: TS-0023 ModuleClasses: binarySwitch, temperature, battery, relativeHumidity
MODULE_CLASSES: tuple[dict[str, Any], ...] = (
    {
        "name": "binarySwitch",
        "short": "cod:binSh",
        "cnd": _COD + "binarySwitch",
        "attributes": {"powerSe": {"type": "boolean", "mandatory": True}},
    },
    {
        "name": "temperature",
        "short": "cod:tempe",
        "cnd": _COD + "temperature",
        "attributes": {
            "curT0": {"type": "float", "mandatory": True},
            "tarTe": {"type": "float"},
            "unit": {"type": "integer", "values": [1, 2, 3]},  # Celsius, Fahrenheit, Kelvin
            "minVe": {"type": "float"},
            "maxVe": {"type": "float"},
            "steVe": {"type": "float"},
        },
    },
    {
        "name": "battery",
        "short": "cod:bat",
        "cnd": _COD + "battery",
        "attributes": {
            "lvl": {"type": "integer", "min": 0, "max": 100, "mandatory": True},
            "capay": {"type": "integer", "min": 0},
            "charg": {"type": "boolean"},
            "dischg": {"type": "boolean"},
            "lowBy": {"type": "boolean"},
            "batTd": {"type": "integer", "min": 0, "max": 100},
            "elEne": {"type": "integer", "min": 0},
            "matel": {"type": "integer"},
        },
    },
    {
        "name": "relativeHumidity",
        "short": "cod:relHy",
        "cnd": _COD + "relativeHumidity",
        "attributes": {
            "relHy": {"type": "float", "min": 0, "max": 100, "mandatory": True},
            "desHy": {"type": "integer", "min": 0, "max": 100},
        },
    },
)

"""The ``twistd acmews`` plugin: a one-line ServiceMaker; everything lives in acmews.tap."""

from twisted.application.service import ServiceMaker

acmews = ServiceMaker(
    "acmews",
    "acmews.tap",
    "A oneM2M CSE on the WebSocket binding (TS-0020) with the ACME extensions",
    "acmews",
)

"""acmews: the oneM2M WebSocket binding (TS-0020) for Twisted, on Autobahn."""

__version__ = "0.1.0"

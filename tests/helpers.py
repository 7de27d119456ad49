"""Test helpers that need trial or the global reactor (the doubles are in acmews.testing)."""

from __future__ import annotations

from typing import Any

from acmews.options import ConnectionOptions

#: for loopback tests: no keep-alive pings (the handshake timers stay on the real reactor)
NO_PING = ConnectionOptions(ping_interval=0)


async def start_cse(test: Any, *argv: str) -> tuple[Any, str]:
    """``twistd acmews``'s service (makeService) on 127.0.0.1, port 0 unless ``argv`` has a
    ``--listen`` of its own, with the global reactor, stopped at ``test``'s cleanup; its
    service and ``ws://`` URL (of its first listener)."""
    from twisted.internet import reactor

    from acmews.tap import Options, makeService

    options = Options()
    listen = () if "--listen" in argv else ("--listen", "tcp:0:interface=127.0.0.1")
    options.parseOptions([*listen, "--ping-interval", "0", "--store", "memory:", *argv])
    service: Any = makeService(options, reactor)
    service.privilegedStartService()
    service.startService()
    test.addCleanup(service.stopService)
    port, *_ = await service.listening
    return service, f"ws://127.0.0.1:{port.getHost().port}"

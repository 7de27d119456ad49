"""How the CSE reaches an originator: the poa chain, its store-and-forward queue and connectors.

- :mod:`acmews.poa.chain`: :class:`PoaChain` (live connection, poa entries, queue);
- :mod:`acmews.poa.queue`: :class:`INotificationQueue` and :class:`MemoryNotificationQueue`;
- :mod:`acmews.poa.websocket` and :mod:`acmews.poa.http`: the ``ws``/``wss`` and
  ``http``/``https`` connectors;
- :mod:`acmews.poa.credentials`: the ``Authorization`` shown to a poa, by URL.
"""

from acmews.poa.chain import PoaChain
from acmews.poa.credentials import OutboundCredentials, read_outbound_credentials
from acmews.poa.http import AgentClient, HttpClient, HttpConnector, http_url
from acmews.poa.limits import OutboundLimits, TargetPolicy
from acmews.poa.queue import INotificationQueue, MemoryNotificationQueue, QueuedNotification
from acmews.poa.steps import DEFAULT_POA
from acmews.poa.websocket import ConnectFunction, WebSocketConnector

__all__ = [
    "DEFAULT_POA",
    "AgentClient",
    "ConnectFunction",
    "HttpClient",
    "HttpConnector",
    "INotificationQueue",
    "MemoryNotificationQueue",
    "OutboundCredentials",
    "OutboundLimits",
    "PoaChain",
    "QueuedNotification",
    "TargetPolicy",
    "WebSocketConnector",
    "http_url",
    "read_outbound_credentials",
]

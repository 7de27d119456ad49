"""One CSE on many nodes: the originator directory, the relay between nodes and the leader's
lease, on Redis (see :mod:`acmews.cluster.node`)."""

from acmews.cluster.node import DEFAULT_PREFIX, ClusterNode, Singletons, valid_node_name
from acmews.cluster.redis import RedisClient, RedisUnavailable, RedisURL

__all__ = [
    "DEFAULT_PREFIX",
    "ClusterNode",
    "RedisClient",
    "RedisURL",
    "RedisUnavailable",
    "Singletons",
    "valid_node_name",
]

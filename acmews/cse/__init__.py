"""The embedded CSE: resource tree, AE registration, subscriptions and notifications."""

from acmews.cse.config import CSEConfig
from acmews.cse.core import CSE
from acmews.cse.resource import KINDS, Resource, ResourceKind
from acmews.cse.store import Batch, IResourceReader, IResourceStore, MemoryResourceStore

__all__ = [
    "CSE",
    "KINDS",
    "Batch",
    "CSEConfig",
    "IResourceReader",
    "IResourceStore",
    "MemoryResourceStore",
    "Resource",
    "ResourceKind",
]

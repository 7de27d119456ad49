"""The embedded CSE: resource tree, AE registration, subscriptions and notifications."""

from acmews.cse.core import CSE, CSEConfig
from acmews.cse.resource import KINDS, Resource, ResourceKind
from acmews.cse.store import MemoryResourceStore

__all__ = ["CSE", "KINDS", "CSEConfig", "MemoryResourceStore", "Resource", "ResourceKind"]

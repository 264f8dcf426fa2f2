"""File-based registry of policy bundles with an atomically switched production pointer."""

from bartops.registry.store import Registry, RegistryError

__all__ = ["Registry", "RegistryError"]

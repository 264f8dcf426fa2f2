"""File-based registry of policy bundles with an atomically switched production pointer."""

from bartops.registry.store import ProductionPointer, Registry, RegistryError, registry_root

__all__ = ["ProductionPointer", "Registry", "RegistryError", "registry_root"]

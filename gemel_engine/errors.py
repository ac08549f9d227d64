"""Errors the engine raises for bad input: each carries one clear line for the operator."""

from __future__ import annotations


class GemelError(Exception):
    """Base class for every error the engine reports to operators (CLI exits non-zero with its message)."""


class UnknownArchitectureError(GemelError):
    """An architecture name that the zoo registry does not know."""


class RegistryError(GemelError):
    """A registry was asked to hold two entries under one name."""


class WeightsError(GemelError):
    """A weight file that cannot be read, is unsafe, or does not fit its architecture."""


class PlanError(GemelError):
    """A merge plan that is malformed or inconsistent."""


class SharingError(GemelError):
    """A plan that cannot be applied to the given models (missing layers, incompatible shapes)."""


class BundleError(GemelError):
    """A merged bundle that is missing, corrupt, tampered with, or of an unknown format."""


class SourceError(GemelError):
    """A camera source that cannot be opened, decoded or reached."""


class UsageError(GemelError):
    """A command-line argument that is malformed or names something that does not exist."""


class RuntimeBudgetError(GemelError):
    """A model, bundle or deployment that cannot run within the edge runtime's memory budget."""


class RuntimeConfigError(GemelError):
    """A runtime setting (scheduler, eviction policy, bandwidth, clock, query) that is unknown or malformed."""


class DeploymentError(GemelError):
    """A deployment that cannot be prepared or switched to (malformed spec, model missing, camera unreachable)."""

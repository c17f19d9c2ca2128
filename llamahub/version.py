"""The package version (a module of its own, so the hub reads it without the package face)."""

__version__ = "0.1.0"

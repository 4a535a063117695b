"""The installed package's version: one home, so doors report it without importing each other."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version

__all__ = ["package_version"]


@cache
def package_version() -> str:
    """voxgate's version as installed (``0+unknown`` when run from a tree that is not installed)."""
    try:
        return version("voxgate")
    except PackageNotFoundError:
        return "0+unknown"

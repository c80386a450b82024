"""Moved to `rtl.artifacts.cache` (the bottom layer: experts, sweeps and studies share the cache)."""

from rtl.artifacts.cache import PretrainCache, cache_key

__all__ = ["PretrainCache", "cache_key"]

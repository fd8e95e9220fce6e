"""Name -> function returning a RunConfig. `@register` files a config under its function name."""
from __future__ import annotations

from typing import Callable

from llip.config import RunConfig

REGISTRY: dict[str, Callable[[], RunConfig]] = {}


def register(fn: Callable[[], RunConfig]) -> Callable[[], RunConfig]:
    if fn.__name__ in REGISTRY:
        raise RuntimeError(f"run config {fn.__name__} registered twice")
    REGISTRY[fn.__name__] = fn
    return fn

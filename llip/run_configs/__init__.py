"""Every experiment is a function in this package returning a RunConfig; importing the package
registers them all. `resolve(name, overrides)` is how commands turn CLI text into a config."""
import dataclasses

from llip.cli import apply_overrides
from llip.config import RunConfig
from llip.errors import ConfigError, closest
from llip.run_configs import (  # noqa: F401  (importing registers the configs)
    baselines,
    llip_paper,
    released,
    scenes,
    small,
)
from llip.run_configs.registry import REGISTRY


def get_config(name: str) -> RunConfig:
    if name not in REGISTRY:
        raise ConfigError(f"unknown config {name!r}; closest: {closest(name, REGISTRY)} "
                          "(python -m llip.main --list shows all)")
    cfg = REGISTRY[name]()
    return dataclasses.replace(cfg, name=cfg.name or name)


def list_configs() -> list[tuple[str, str]]:
    return [(name, REGISTRY[name]().description) for name in sorted(REGISTRY)]


def resolve(name: str, overrides=()) -> RunConfig:
    return apply_overrides(get_config(name), list(overrides))

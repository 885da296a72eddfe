"""Where PIM keeps runtime files (sockets, pid files) and its cache."""

from __future__ import annotations

import os
from pathlib import Path


def runtime_dir() -> Path:
    """$XDG_RUNTIME_DIR/pim, else /tmp/pim; created private to the user."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(base) / "pim" if base else Path("/tmp/pim")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """$PIM_CACHE_DIR, else $XDG_CACHE_HOME/pim, else ~/.cache/pim."""
    explicit = os.environ.get("PIM_CACHE_DIR")
    if explicit:
        path = Path(explicit)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        path = (Path(xdg) if xdg else Path.home() / ".cache") / "pim"
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_config_file() -> Path:
    """$XDG_CONFIG_HOME/pim/config.yaml, else ~/.config/pim/config.yaml (it may not exist)."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg) if xdg else Path.home() / ".config") / "pim" / "config.yaml"


def user_builders_file() -> Path:
    """$XDG_CONFIG_HOME/pim/builders.yaml, else ~/.config/pim/builders.yaml (it may not exist)."""
    return user_config_file().with_name("builders.yaml")

"""Where releases live by default, and where the committed manifests are."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the default release folder.
RELEASE_ENV = "CHAMMI_RELEASE"


def default_release_dir() -> Path:
    """``$CHAMMI_RELEASE`` if set, else ``$XDG_CACHE_HOME/chammi/release`` (``~/.cache/chammi/release``).

    ``chammi-build`` writes here when given no ``--output``; ``chammi_data.load`` reads here when given no root.
    """
    env = os.environ.get(RELEASE_ENV)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "chammi" / "release"


def manifests_dir() -> Path:
    """The committed ``manifests/`` folder (task definitions, vocabularies); ``$CHAMMI_MANIFESTS`` overrides."""
    env = os.environ.get("CHAMMI_MANIFESTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "manifests"

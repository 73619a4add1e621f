"""Where releases live by default, and where the committed manifests and bundled configs are.

``manifests/`` and ``configs/`` are top-level folders of the repository. A wheel ships them inside the
packages (``pyproject.toml`` maps them to ``chammi_data/_manifests`` and ``chammi_models/_configs``), so the
lookups here try the installed copy first and then the checkout's folder (editable install, source tree).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path, PurePosixPath, PureWindowsPath

#: Environment variable naming the default release location (a folder or a URL).
RELEASE_ENV = "CHAMMI_RELEASE"
#: Environment variable overriding the manifests folder (task rules, vocabularies).
MANIFESTS_ENV = "CHAMMI_MANIFESTS"


def protocol_of(location: str) -> str:
    """The URL scheme of a location in lower case (``s3``, ``https``, ``file``), "" for a plain path."""
    return location.split("://", 1)[0].lower() if "://" in location else ""


def strip_file_scheme(location: str) -> str:
    """A ``file://`` URL as a plain path; anything else unchanged."""
    return location[len("file://") :] if location.lower().startswith("file://") else location


def default_release_location() -> str:
    """``$CHAMMI_RELEASE`` (a folder or a URL) if set, else ``$XDG_CACHE_HOME/chammi/release``
    (``~/.cache/chammi/release``).

    The one default: ``chammi-build`` writes here when given no ``--output``, and every reader
    (``chammi_data.load``, ``stream``, the commands' ``--release``) reads here when given no location. A
    folder comes back as an absolute-or-home-expanded path, a URL as it is.
    """
    env = os.environ.get(RELEASE_ENV)
    if env:
        return env if protocol_of(env) not in ("", "file") else str(Path(strip_file_scheme(env)).expanduser())
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return str(Path(cache) / "chammi" / "release")


def bundled_dir(package: str, packaged: str, checkout: str) -> Path:
    """A data folder shipped with ``package``: ``<package>/<packaged>`` in an installed wheel, else the
    checkout's top-level ``<checkout>`` folder beside the package (editable install or source tree).

    ``package`` is located with ``importlib.util.find_spec``, which does not import it. Raises
    ``FileNotFoundError`` naming both places when neither exists.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; cannot find its {checkout}/ folder")
    pkg_dir = Path(next(iter(spec.submodule_search_locations))).resolve()
    candidates = (pkg_dir / packaged, pkg_dir.parent / checkout)
    for path in candidates:
        if path.is_dir():
            return path
    raise FileNotFoundError(
        f"{checkout}/ of {package} not found (looked in {candidates[0]} and {candidates[1]}); "
        "reinstall the chammi wheel, or run from a checkout of the repository"
    )


def manifests_dir() -> Path:
    """The committed ``manifests/`` folder (task definitions, vocabularies); ``$CHAMMI_MANIFESTS`` overrides.

    Installed wheel: ``chammi_data/_manifests``; checkout: ``<repository>/manifests``.
    """
    env = os.environ.get(MANIFESTS_ENV)
    if env:
        return Path(env)
    return bundled_dir("chammi_data", "_manifests", "manifests")


def configs_dir() -> Path:
    """The bundled training configs (``configs/<name>.yaml``) of ``chammi_models``.

    Installed wheel: ``chammi_models/_configs``; checkout: ``<repository>/configs``. Found by location only:
    ``chammi_data`` does not import ``chammi_models``.
    """
    return bundled_dir("chammi_models", "_configs", "configs")


class UnsafePathError(ValueError):
    """A relative path that would leave the folder it is joined to (absolute, ``..``, a link outside)."""


def safe_join(root: str | Path, rel: str | Path) -> Path:
    """``root / rel`` for a relative path that stays inside ``root``, else :class:`UnsafePathError`.

    Refused: an empty or absolute ``rel`` (also a Windows drive or UNC root), any ``..`` component, and a
    result that resolves outside ``root`` (e.g. through a symbolic link). ``/`` and ``\\`` both separate.
    Use it for every output path built from data (cell ids, a manifest's ``file_path``).
    """
    text = str(rel).replace("\\", "/")
    parts = PurePosixPath(text).parts
    win = PureWindowsPath(str(rel))
    if not text.strip() or text.startswith("/") or win.drive or win.root or ".." in parts:
        raise UnsafePathError(f"unsafe path {str(rel)!r}: must be relative, without '..', inside {root}")
    base = Path(root)
    out = base.joinpath(*parts)
    if not out.resolve().is_relative_to(base.resolve()):
        raise UnsafePathError(
            f"unsafe path {str(rel)!r}: resolves to {out.resolve()}, outside {base.resolve()}"
        )
    return out


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()

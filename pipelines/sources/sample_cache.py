"""A machine-wide cache of the generated sample raw data, so that it is generated once per code version.

Generating the three sources' sample takes about 30 s (HPA fields alone 15 s), and every ``chammi demo``,
every ``chammi-build`` without ``--input`` and many tests did it again with the same seed and code. The cache
holds each source's folder under a key of everything its bytes depend on: the source name, the seed, the
text of every module of ``pipelines`` (a change to any generator or helper makes a new key) and the
versions of the libraries that encode the files (numpy, scipy, Pillow, tifffile, imagecodecs).

Reads are verified: each entry lists the sha256 of its files, and a copy out of the cache checks every file
against it; an entry that does not match (a flipped byte, a file removed or added) is deleted and the sample
generated again. Entries are written to a temporary name and renamed, so two processes filling the same key
at once leave one complete entry. A cache that cannot be written (read-only home, full disk) is skipped
with a debug log line: the sample is generated as before.

Where: ``$CHAMMI_SAMPLE_CACHE`` (``off`` disables it), else ``$XDG_CACHE_HOME/chammi/samples``, else
``~/.cache/chammi/samples``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "cache_dir", "cache_key", "fetch", "store"]

CACHE_ENV = "CHAMMI_SAMPLE_CACHE"
LISTING = "files.sha256"
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the pipelines package
_LIBRARIES = ("numpy", "scipy", "PIL", "tifffile", "imagecodecs")


def cache_dir() -> Path | None:
    """The cache folder, or None when ``$CHAMMI_SAMPLE_CACHE`` is ``off``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env.lower() in ("off", "0", "false", "no"):
        return None
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "chammi" / "samples"


@functools.lru_cache(maxsize=4)
def _code_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _library_versions() -> str:
    import importlib

    out = []
    for name in _LIBRARIES:
        try:
            out.append(f"{name}={getattr(importlib.import_module(name), '__version__', '?')}")
        except ImportError:
            out.append(f"{name}=absent")
    return ",".join(out)


def _generator_identity(synth: Any) -> str | None:
    """Name and code of the generator called (a replaced one, e.g. a smaller sample in a test, has its own
    key); None for a callable without code of its own (then nothing is cached)."""
    func = getattr(synth, "__func__", synth)
    code = getattr(func, "__code__", None)
    if code is None:
        return None
    body = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16]
    return f"{func.__module__}.{func.__qualname__}:{body}"


def cache_key(name: str, seed: int, synth: Any = None, root: Path = _PACKAGE_ROOT) -> str | None:
    """The key of one source's sample: name, seed, the generator, the code of ``root`` and the encoders'
    versions (None: not cacheable)."""
    generator = "default" if synth is None else _generator_identity(synth)
    if generator is None:
        return None
    text = f"{name}|seed={seed}|{generator}|code={_code_digest(root)}|{_library_versions()}"
    return f"{name}-{seed}-{hashlib.sha256(text.encode()).hexdigest()[:24]}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _listing(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def fetch(name: str, seed: int, dest: Path, synth: Any = None) -> bool:
    """Copy the cached sample of ``name`` (made by ``synth``) into the new folder ``dest``, verified file by
    file; False (and nothing at ``dest``) when there is no entry or it does not match its listing (then it is
    deleted)."""
    root, key = cache_dir(), cache_key(name, seed, synth)
    if root is None or key is None:
        return False
    entry = root / key
    listing_file = entry / LISTING
    if not listing_file.is_file():
        return False
    try:
        expected = dict(line.split("  ", 1)[::-1] for line in listing_file.read_text().splitlines() if line)
        files = entry / "files"
        found = {p.relative_to(files).as_posix() for p in files.rglob("*") if p.is_file()}
        if found != set(expected):
            raise ValueError(f"holds {len(found)} files, its listing {len(expected)}")
        for rel, want in expected.items():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files / rel, target)
            if _sha256(target) != want:
                raise ValueError(f"{rel}: sha256 differs from the listing")
    except (OSError, ValueError) as exc:
        log.warning(
            "sample cache entry %s is damaged (%s): removed, the sample is generated again", entry, exc
        )
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(entry, ignore_errors=True)
        return False
    return True


def store(name: str, seed: int, folder: Path, synth: Any = None) -> None:
    """Keep a copy of the freshly generated ``folder`` under its key (skipped when it cannot be written)."""
    root, key = cache_dir(), cache_key(name, seed, synth)
    if root is None or key is None:
        return
    entry = root / key
    if (entry / LISTING).is_file():
        return
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    try:
        shutil.copytree(folder, tmp / "files")
        listing = _listing(tmp / "files")
        (tmp / LISTING).write_text("".join(f"{sha}  {rel}\n" for rel, sha in listing.items()))
        try:
            tmp.rename(entry)
        except OSError:  # another process stored the same key first
            pass
    except OSError as exc:
        log.debug("sample cache not written at %s: %s", root, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""Where a release is in its location: at the root, or in the generation folder its ``release.json`` names.

``chammi-build`` writes a release into an object store under a generation prefix (``<location>/g-<id>/``,
``pipelines.engine.output_store``) and then ``release.json`` at the root - the same bytes as the generation's
own - as the single commit point. ``release.json["extra"]["generation"]`` names the generation (every build
records it, also into a folder, where the release lies at the root).

A :class:`~chammi_data.store.storage.ReleaseStore` asks :func:`find_generation` once, on first use, and then
reads every file of the release - ``release.json`` included - from that generation. So a reader that opened
the old release keeps reading the old one while a rebuild publishes a new one (the resolved generation
travels with a pickled store, to DataLoader workers), and never sees a mix of the two. A release whose
generation folder does not exist (a local build, or a folder copied into a bucket as it is) is read from the
root.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: the name of a generation folder
GENERATION_RE = re.compile(r"g-[0-9a-f]{8,64}")


def find_generation(store: Any) -> tuple[str, bytes | None]:
    """(``"g-.../"`` or ``""``, the root release.json's bytes when the release is at the root) for a store
    whose generation prefix is still ``""``; a missing or unreadable release.json gives ``("", None)``."""
    try:
        raw = store.read_bytes("release.json")
        data = json.loads(raw)
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return "", None
    gen = (data.get("extra") or {}).get("generation") if isinstance(data, dict) else None
    if isinstance(gen, str) and GENERATION_RE.fullmatch(gen) and store.exists(f"{gen}/release.json"):
        return gen + "/", None
    return "", raw  # the release is at the root: its release.json need not be read twice

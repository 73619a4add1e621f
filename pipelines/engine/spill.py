"""The unit spill file: one finished unit's encoded cells, records and skips, written once, read by offset.

A spill (``OUTPUT/.work/<name>/units/<unit_id>.spill``) holds the encoded bytes of every cell of the unit (its
tar image member, then its zarr chunk: ``chammi_data.format.writer.encode_cell``), then a JSON trailer
``{"key", "records", "skipped", "found", "ok"}`` (the unit's :class:`UnitOutcome`), the trailer's length
(uint64 little-endian) and a marker line. Each record holds the cell's ids, metadata, pixel sha256 and shape,
and ``tar`` / ``zarr`` = [offset, length] of its bytes, so a shard writer reads exactly its bytes with one
``pread`` each.

A spill is written to a temp file and moved into place, so it is complete or absent; its ``key`` says what it
was made from (pipeline, unit, options, format version): a spill with another key, a torn file or a foreign
file is recomputed. That is what makes a build resumable after a kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chammi_data.format.release_format import canonical_json
from pipelines.sources.base import Skipped, Unit, UnitResult

#: part of every spill key: a spill written by another format version is recomputed
SPILL_VERSION = 4
#: a spill file ends with its JSON trailer, the trailer's length (uint64 little-endian) and this marker
SPILL_MAGIC = b"CHAMMI-SPILL-2\n"
_TAIL = 8 + len(SPILL_MAGIC)


@dataclass
class UnitOutcome:
    """What one unit gave: its cells' spill records (in the unit's order), its skipped items, the candidate
    cells it held (``UnitResult.found``) and whether it was used (``ok``: ``process`` returned cells or
    per-cell skips, rather than a skip of the whole unit)."""

    records: list[dict[str, Any]]
    skipped: list[Skipped]
    found: dict[str, int] = field(default_factory=dict)
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "skipped": [s.to_dict() for s in self.skipped],
            "found": self.found,
            "ok": self.ok,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitOutcome:
        return cls(
            d["records"], [Skipped.from_dict(s) for s in d["skipped"]], dict(d["found"]), bool(d["ok"])
        )


def spill_key(name: str, unit: Unit, options_hash: str) -> str:
    """What a spill depends on: pipeline name, unit id and payload, the pipeline's options. A mismatch =
    recompute."""
    return hashlib.sha256(
        canonical_json([SPILL_VERSION, name, unit.unit_id, unit.payload, options_hash]).encode()
    ).hexdigest()


def write_spill(
    path: Path, key: str, result: UnitResult, ok: bool = True, codec: str = "zstd"
) -> UnitOutcome:
    """Atomically write a unit's cells to one spill file; returns the unit's outcome (see the module
    docstring).

    ``codec``: the image members' codec (``chammi_data.format.codec.CODECS``). Compressing here, on the
    worker that made the cells, spreads the heaviest part of writing over the unit
    phase; the shard writers only concatenate.
    """
    from chammi_data.format.writer import encode_cell

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
    records = []
    try:
        with open(tmp, "wb") as fh:
            pos = 0
            for c in result.cells:
                enc = encode_cell(c, codec)
                fh.write(enc.member)
                fh.write(enc.chunk)
                records.append(
                    {
                        **enc.record,
                        "tar": [pos, len(enc.member)],
                        "zarr": [pos + len(enc.member), len(enc.chunk)],
                    }
                )
                pos += len(enc.member) + len(enc.chunk)
            outcome = UnitOutcome(records, list(result.skipped), dict(result.found), ok)
            trailer = canonical_json({"key": key, **outcome.to_dict()}).encode("utf-8")
            fh.write(trailer)
            fh.write(len(trailer).to_bytes(8, "little") + SPILL_MAGIC)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return outcome


def read_spill_outcome(path: Path, key: str) -> UnitOutcome | None:
    """The outcome stored in a complete spill with the expected key; None when absent, stale or damaged."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size < _TAIL:
                return None
            fh.seek(size - _TAIL)
            tail = fh.read(_TAIL)
            n = int.from_bytes(tail[:8], "little")
            if tail[8:] != SPILL_MAGIC or n > size - _TAIL:
                return None
            fh.seek(size - _TAIL - n)
            data = json.loads(fh.read(n).decode("utf-8"))
        if data.get("key") != key:
            return None
        return UnitOutcome.from_dict(data)
    except Exception:  # a foreign file: recompute the unit
        return None


class SpillReader:
    """Reads cells' bytes out of spill files by their [offset, length] spans, one open file per spill."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str, span: list[int] | tuple[int, int], what: str = "cell") -> bytes:
        """The ``span`` = [offset, length] bytes of spill ``path``; ``OSError`` when the file is shorter."""
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        offset, length = span
        data = os.pread(self._fds[path], length, offset)
        if len(data) != length:
            raise OSError(f"spill {path} is shorter than its records say ({what})")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> SpillReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

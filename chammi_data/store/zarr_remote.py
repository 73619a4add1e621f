"""A read-only zarr store over a :class:`~chammi_data.store.storage.ReleaseStore`: zarr reads of a remote
release get the same deadlines, retries, errors and ``Range`` handling as the tar reads.

zarr's own ``FsspecStore`` talks to the filesystem directly: no deadline of ours, the clients' nested retry
loops, and a server that ignores ``Range`` hands zarr a whole shard file where it asked for a chunk's bytes
(read as "Stored and computed checksum do not match"). :class:`ReleaseZarrStore` answers every zarr request
with :meth:`ReleaseStore.read_bytes` / :meth:`~ReleaseStore.read_range` / :meth:`~ReleaseStore.read_suffix`
on a worker thread (the store's calls block; zarr's loop keeps running).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import Buffer, BufferPrototype

from chammi_data.store.storage import ReleaseStore, RemoteObjectError


class ReleaseZarrStore(Store):
    """zarr's view of ``prefix`` (e.g. ``zarr/hpa.zarr``) of a release, read-only, through ``store``."""

    supports_writes = False
    supports_deletes = False
    supports_listing = False

    def __init__(self, store: ReleaseStore, prefix: str) -> None:
        super().__init__(read_only=True)
        self.store, self.prefix = store, prefix.strip("/")

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ReleaseZarrStore)
            and other.store.url == self.store.url
            and other.prefix == self.prefix
        )

    def __repr__(self) -> str:
        return f"ReleaseZarrStore({self.store.path(self.prefix)!r})"

    def _rel(self, key: str) -> str:
        return f"{self.prefix}/{key}"

    def _read(self, key: str, byte_range: ByteRequest | None) -> bytes | memoryview | None:
        rel = self._rel(key)
        try:
            if byte_range is None:
                return self.store.read_bytes(rel)
            if isinstance(byte_range, RangeByteRequest):
                return self.store.read_range_view(rel, byte_range.start, byte_range.end - byte_range.start)
            if isinstance(byte_range, SuffixByteRequest):
                return self.store.read_suffix(rel, byte_range.suffix)
            if isinstance(byte_range, OffsetByteRequest):
                size = self.store.size(rel)
                if size is None:
                    return self.store.read_bytes(rel)[byte_range.offset :]
                return self.store.read_range_view(rel, byte_range.offset, max(0, size - byte_range.offset))
        except RemoteObjectError as exc:
            if exc.missing:
                return None
            raise
        except FileNotFoundError:
            return None
        raise ValueError(f"unexpected byte range {byte_range!r}")

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        data = await asyncio.to_thread(self._read, key, byte_range)
        return None if data is None else prototype.buffer.from_bytes(data)

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.store.exists, self._rel(key))

    async def set(self, key: str, value: Buffer) -> None:
        raise PermissionError(f"{self!r} is read-only")

    async def delete(self, key: str) -> None:
        raise PermissionError(f"{self!r} is read-only")

    def list(self) -> AsyncIterator[str]:
        raise NotImplementedError("a release's zarr store is read by key, not listed")

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        raise NotImplementedError("a release's zarr store is read by key, not listed")

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        raise NotImplementedError("a release's zarr store is read by key, not listed")

    def __getstate__(self) -> dict[str, Any]:
        return {"store": self.store, "prefix": self.prefix}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["store"], state["prefix"])  # type: ignore[misc]

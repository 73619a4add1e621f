"""The descriptors of local reads are bounded for the process, not per store, and never closed under a reader.

Before: each store kept up to 64 shard files open, so a process with a few dozen releases open held over a
thousand descriptors (the test suite reached ~1,100), past the common limit of 1,024."""

from __future__ import annotations

import gc
import os
import threading
from pathlib import Path

from chammi_data.format.manifest import read_manifest
from chammi_data.format.shards import ShardReader
from chammi_data.store.fdpool import POOL, FdPool
from chammi_data.store.storage import MAX_OPEN_FILES, open_store


def _files(tmp_path: Path, n: int, size: int = 4096) -> list[Path]:
    out = []
    for i in range(n):
        path = tmp_path / f"f{i:03d}"
        path.write_bytes(bytes([i % 251]) * size)  # each file's bytes say which file they came from
        out.append(path)
    return out


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_the_pool_keeps_at_most_its_limit_open(tmp_path: Path):
    pool = FdPool(limit=4)
    files = _files(tmp_path, 12)
    before = _open_fds()
    token = pool.token()
    for path in files * 2:
        assert pool.pread(token, str(path), 100, 8) == bytes([files.index(path) % 251]) * 8
        assert pool.open_count() <= 4
    assert _open_fds() - before <= 4
    pool.close_token(token)
    assert pool.open_count() == 0 and _open_fds() == before


def test_many_threads_on_a_tiny_pool_never_read_another_files_bytes(tmp_path: Path):
    """Eviction under concurrent readers: a descriptor closed while another thread preads from it, and its
    number reused by the next open, would hand that thread another file's bytes."""
    pool = FdPool(limit=2)
    files = _files(tmp_path, 24)
    token = pool.token()
    wrong: list[str] = []

    def reader(seed: int) -> None:
        for k in range(300):
            i = (seed * 7 + k * 5) % len(files)
            got = pool.pread(token, str(files[i]), (k * 13) % 4000, 64)
            if got != bytes([i]) * 64:
                wrong.append(f"{files[i].name}: {got[:4]!r}")

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []
    assert pool.open_count() <= 2  # the extra entries were closed as their readers let go
    pool.close_token(token)


def test_a_store_keeps_its_file_and_a_new_store_sees_the_replaced_one(tmp_path: Path):
    """Keyed by store: a rebuild that replaces a shard under an open store does not change what that store
    reads (as before the pool), and a store opened afterwards reads the new file."""
    path = tmp_path / "shard.tar"
    path.write_bytes(b"A" * 100)
    pool = FdPool(limit=8)
    old, new = pool.token(), pool.token()
    assert pool.pread(old, str(path), 0, 4) == b"AAAA"
    tmp = tmp_path / "shard.tar.tmp"
    tmp.write_bytes(b"B" * 100)
    os.replace(tmp, path)
    assert pool.pread(old, str(path), 0, 4) == b"AAAA"
    assert pool.pread(new, str(path), 0, 4) == b"BBBB"


def test_forty_open_releases_stay_within_the_process_bound(tiny_release_copy: Path):
    """The user-facing case: many stores alive at once, each reading every shard of its release."""
    manifest = read_manifest(tiny_release_copy)
    rows = manifest.drop_duplicates("shard").to_dict("records")
    before = _open_fds()
    stores = [open_store(tiny_release_copy) for _ in range(40)]
    readers = [ShardReader(store) for store in stores]
    for reader in readers:
        for row in rows:
            reader.read(row, verify=True)
    assert len(rows) * 40 > MAX_OPEN_FILES  # the readers did ask for more files than the bound
    assert _open_fds() - before <= MAX_OPEN_FILES  # maps and pread descriptors of all of them together
    for store in stores:
        store.close()
    del readers, reader
    gc.collect()
    assert _open_fds() <= before  # collected readers leave nothing open (each used to leak one per shard)


def test_a_forked_child_reads_through_its_own_descriptors(tmp_path: Path):
    path = _files(tmp_path, 1)[0]
    token = POOL.token()
    assert POOL.pread(token, str(path), 0, 2) == b"\x00\x00"
    pid = os.fork()
    if pid == 0:  # the child: the parent's entries are dropped on first use, reads still right
        ok = POOL.pread(token, str(path), 10, 2) == b"\x00\x00" and POOL.open_count() == 1
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert POOL.pread(token, str(path), 0, 2) == b"\x00\x00"  # the parent's descriptor still works
    POOL.close_token(token)

"""The shard cache under attack: a full disk (a real 8 KiB tmpfs when the tests run as root, and a simulated
ENOSPC everywhere) is one error naming the path and the bytes needed, with no partial file left; a reader
killed mid-download leaves a temporary file that the next process to open the cache removes, while a file a
live process is writing is never touched."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import chammi_data
import chammi_data.store.cache as cache
from chammi_data.store.cache import CacheFullError, clean_stale_temp_files, host_tag, temp_path
from chammi_data.store.storage import DOWNLOAD_CHUNK, ReleaseStore, RetryPolicy
from tests.servers import HTTPServer

QUICK = RetryPolicy(attempts=3, backoff=0.01, timeout=10, deadline=30)


@pytest.fixture(scope="module")
def http(tiny_release: Path):
    with HTTPServer(tiny_release) as server:
        yield server


def _temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp")) if root.exists() else []


def test_a_full_cache_is_one_error_naming_the_path_and_the_bytes(http, tiny_release, tmp_path, monkeypatch):
    def disk_full(fh, chunk):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache, "_write", disk_full)
    store = ReleaseStore(http.url, cache_dir=tmp_path / "cache", retry=QUICK)
    ds = chammi_data.load("all", root=store)
    shard = ds.rows.iloc[0]["shard"]
    with pytest.raises(CacheFullError) as err:
        ds.read_array(0)
    msg = str(err.value)
    size = (tiny_release / shard).stat().st_size
    assert f"no space left in the cache at {store.cache_path(shard).parent}" in msg, msg
    assert f"{http.url}/{shard}: it needs {size:,} bytes" in msg and "bytes are free there" in msg, msg
    assert isinstance(err.value, OSError) and err.value.errno == errno.ENOSPC
    assert not _temp_files(tmp_path / "cache") and not store.cache_path(shard).exists()


@pytest.mark.slow
@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root to mount a tmpfs"
)
def test_a_full_cache_on_a_real_small_disk_through_the_command_line(http, tmp_path):
    """``chammi train ... data.cache_dir=`` on an 8 KiB tmpfs (mounted in a private mount namespace): one
    line, exit status 2, naming the cache and the bytes needed."""
    small = tmp_path / "small_disk"
    small.mkdir()
    train = [sys.executable, "-m", "chammi_cli", "train", "--config", "tiny_cpu", "--release", http.url]
    train += ["--out", str(tmp_path / "run"), "--stop-after", "1", "data.workers=0", "data.batch_size=8"]
    train += ["data.image_size=32", f"data.cache_dir={small}"]
    script = f'mount -t tmpfs -o size=8k tmpfs {small} && exec "$@"'
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("CHAMMI_DEBUG", None)
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", *train],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if "mount:" in proc.stderr and "permission denied" in proc.stderr.lower():
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("chammi train: error")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"no space left in the cache at {small}/" in errors[0] and "bytes are free there" in errors[0]
    assert f"{http.url}/shards/" in errors[0] and "it needs" in errors[0], errors[0]


def test_stale_temp_files_are_cleaned_when_a_cache_is_opened(http, tmp_path):
    store = ReleaseStore(http.url, cache_dir=tmp_path / "cache", retry=QUICK)
    root = store.cache_root() / "shards" / "hpa"
    root.mkdir(parents=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        files = {
            "dead writer": root / f".hpa-000000.tar.{host_tag()}-{gone.pid}-0a1b2c3d4e5f.tmp",
            "live writer": root / f".hpa-000001.tar.{host_tag()}-{live.pid}-0a1b2c3d4e5f.tmp",
            "another host, fresh": root / f".hpa-000002.tar.0badc0de-{os.getpid()}-0a1b2c3d4e5f.tmp",
            "another host, old": root / f".hpa-000002.tar.0badc0de-{live.pid}-1a1b2c3d4e5f.tmp",
            "unknown writer, old": root / ".hpa-000000.tar.123-abc.tmp",
            "a cached shard": root / "hpa-000009.tar",
        }
        for path in files.values():
            path.write_bytes(b"x" * 100)
        old = time.time() - cache.STALE_AFTER_S - 60
        for name in ("another host, old", "unknown writer, old"):
            os.utime(files[name], (old, old))
        ds = chammi_data.load("all", root=store)
        ds.read_array(0)  # the first use of the cache in this process
        left = {name for name, path in files.items() if path.exists()}
        assert left == {"live writer", "another host, fresh", "a cached shard"}
        # this process's own download in flight is never stale
        mine = temp_path(root / "hpa-000003.tar")
        mine.write_bytes(b"x")
        assert clean_stale_temp_files(store.cache_root()) == [] and mine.exists()
    finally:
        live.kill()
        live.wait()


READER = """
import sys
from chammi_data.store.storage import ReleaseStore, RetryPolicy
store = ReleaseStore(sys.argv[1], cache_dir=sys.argv[2], retry=RetryPolicy(timeout=60, deadline=120))
store.local_path(sys.argv[3])
"""


def test_a_reader_killed_mid_download_leaves_a_temp_file_the_next_reader_removes(tmp_path):
    """A 20 MB shard is downloaded in two requests; the server stops itself at the second, the reader is
    killed with half the shard in its temporary file; the next reader removes that file and caches the
    shard."""
    served = tmp_path / "served"
    rel = "shards/big/big-000000.tar"
    data = np.random.default_rng(0).integers(0, 256, DOWNLOAD_CHUNK + (4 << 20), dtype=np.uint8).tobytes()
    (served / "shards" / "big").mkdir(parents=True)
    (served / rel).write_bytes(data)
    (served / "release.json").write_text(json.dumps({"shards": {rel: hashlib.sha256(data).hexdigest()}}))
    cache_dir = tmp_path / "cache"
    with HTTPServer(served, stall_after=1, stall_path="shards/") as server:
        reader = subprocess.Popen([sys.executable, "-c", READER, server.url, str(cache_dir), rel])
        store = ReleaseStore(server.url, cache_dir=cache_dir, retry=QUICK)
        t0 = time.monotonic()
        while not (server.stalled() and _temp_files(cache_dir)):
            assert reader.poll() is None and time.monotonic() - t0 < 60, "the download never stalled"
            time.sleep(0.05)
        reader.send_signal(signal.SIGKILL)
        reader.wait()
        server.resume()
        [partial] = _temp_files(cache_dir)
        assert f"-{reader.pid}-" in partial.name and partial.stat().st_size == DOWNLOAD_CHUNK
        assert store.local_path(rel).read_bytes() == data
        assert not _temp_files(cache_dir)

"""Real servers on 127.0.0.1 for remote-storage tests and benchmarks, each in its own process.

- :class:`S3Server`: ``moto_server`` (an S3-compatible server from the ``moto[server]`` package);
- :class:`HTTPServer`: ``python -m tests.range_http`` (a static file server with ``Range`` support and fault
  injection, see that module);
- :class:`DelayProxy`: a TCP proxy that holds each client request for a fixed time (injected latency).

Every server binds 127.0.0.1 on a free port, is started with ``start()`` (or as a context manager) and stopped
with ``stop()``: terminate, wait, kill if needed. An ``atexit`` hook stops whatever is still running.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
_RUNNING: set[subprocess.Popen] = set()


def _stop_all() -> None:
    for proc in list(_RUNNING):
        _terminate(proc)


atexit.register(_stop_all)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server process exited with {proc.returncode} before listening on {HOST}:{port}"
            )
        try:
            socket.create_connection((HOST, port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {HOST}:{port} after {timeout} s")


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    _RUNNING.discard(proc)


class _Process:
    """A server subprocess on 127.0.0.1:``port``."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> _Process:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        repo = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=repo
        )
        _RUNNING.add(self.proc)
        _wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            _RUNNING.discard(self.proc)

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far (Linux /proc)."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class S3Server(_Process):
    """moto's S3-compatible server; :meth:`env` gives the environment a client needs (dummy credentials)."""

    KEY_ID, SECRET = "chammitestkey", "chammitestsecret"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.KEY_ID,
            "AWS_SECRET_ACCESS_KEY": self.SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.endpoint,
        }

    def upload(self, folder: Path, bucket: str, prefix: str) -> str:
        """Copy every file under ``folder`` to ``s3://bucket/prefix/`` (bucket created); returns that URL."""
        import s3fs

        fs = s3fs.S3FileSystem(
            key=self.KEY_ID,
            secret=self.SECRET,
            client_kwargs={"endpoint_url": self.endpoint},
            skip_instance_cache=True,
        )
        if not fs.exists(bucket):
            fs.mkdir(bucket)
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            fs.pipe_file(f"{bucket}/{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())
        return f"s3://{bucket}/{prefix}"


def _range_http(port: int, delay_ms: float, *args: str) -> list[str]:
    """The command line of :mod:`tests.range_http` on ``port`` with ``delay_ms`` per request."""
    return [sys.executable, "-m", "tests.range_http", *args, "--port", str(port), "--delay-ms", str(delay_ms)]


class HTTPServer(_Process):
    """The Range-capable static server of :mod:`tests.range_http` serving ``root``."""

    def __init__(self, root: Path, delay_ms: float = 0.0) -> None:
        super().__init__()
        self.root, self.delay_ms = Path(root), delay_ms

    def command(self) -> list[str]:
        return _range_http(self.port, self.delay_ms, "--root", str(self.root))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def fault(self, count: int, kind: str = "503", path: str = "") -> None:
        """Make the next ``count`` requests (under ``path``, if given) fail: ``503``/``500``/``403``/``404``
        answers, ``reset`` (connection closed without an answer) or ``truncate`` (half the body, then
        close)."""
        query = f"count={count}&kind={kind}&path={urllib.request.quote(path)}"
        urllib.request.urlopen(f"{self.url}/_control/fault?{query}", timeout=10).read()

    def corrupt(self, path: str, offset: int) -> None:
        """Serve ``path`` with one byte flipped at ``offset`` from now on (as a bad disk or proxy would)."""
        urllib.request.urlopen(
            f"{self.url}/_control/corrupt?path={urllib.request.quote(path)}&offset={offset}", timeout=10
        ).read()

    def requests(self) -> int:
        """Requests served so far (control requests excluded)."""
        return int(urllib.request.urlopen(f"{self.url}/_control/count", timeout=10).read())


class DelayProxy(_Process):
    """``python -m tests.range_http --proxy``: forwards 127.0.0.1:port to ``target_port``, holding each
    request (each burst of client bytes) for ``delay_ms`` before passing it on; ``per_request``: only the
    first burst of each request (uploads are held once, not once per 64 KiB)."""

    def __init__(self, target_port: int, delay_ms: float, per_request: bool = False) -> None:
        super().__init__()
        self.target_port, self.delay_ms, self.per_request = target_port, delay_ms, per_request

    def command(self) -> list[str]:
        extra = ["--per-request"] if self.per_request else []
        return _range_http(self.port, self.delay_ms, "--proxy", str(self.target_port), *extra)

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

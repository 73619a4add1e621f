"""Real servers on 127.0.0.1 for remote-storage tests and benchmarks, each in its own process.

- :class:`S3Server`: ``moto_server`` (an S3-compatible server from the ``moto[server]`` package);
- :class:`HTTPServer`: ``python -m tests.range_http`` (a static file server with ``Range`` support and fault
  injection, see that module);
- :class:`PlainHTTPServer`: ``python -m http.server``, which ignores ``Range`` (answers 200 with the whole
  file), as many simple servers do;
- :class:`DelayProxy`: a TCP proxy that holds each client request for a fixed time (injected latency).

Every server binds 127.0.0.1 on a free port, is started with ``start()`` (or as a context manager) and stopped
with ``stop()``: continue (if stopped), terminate, wait, kill if needed. An ``atexit`` hook stops whatever is
still running. ``pause()`` / ``resume()`` send SIGSTOP / SIGCONT, a stalled server.
``S3Server(stall_after=N)`` and ``HTTPServer(stall_after=N)`` stop THEMSELVES (SIGSTOP) on the first GET of a
path containing ``stall_path`` after N such requests were answered, so a stall lands at a known point of
a command run in another process (``python -m tests.servers moto ...`` runs moto's app under that counter).
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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


class PortTaken(RuntimeError):
    """The server process exited before it listened: another process took the port first."""


def _listeners(port: int) -> set[int]:
    """Pids of the processes holding a listening TCP socket on ``port`` (from /proc/net/tcp and fds)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # 0A: LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    pids.add(int(entry.name))
            except OSError:
                continue
    return pids


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """Until ``proc`` (or a child of it) listens on ``port``. A port that answers is not enough: free_port
    releases the port before the server binds it, and another process (a dask worker, another test run) may
    take it in between; the server then fails to bind and exits (:class:`PortTaken`, the caller retries)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PortTaken(f"server process exited with {proc.returncode} before listening on {HOST}:{port}")
        try:
            socket.create_connection((HOST, port), 0.2).close()
        except OSError:
            time.sleep(0.05)
            continue
        if _listeners(port) & {proc.pid, *descendants(proc.pid)}:
            return
        time.sleep(0.05)  # someone else's socket: wait for ours, or for the server to give up
    raise TimeoutError(f"the server did not listen on {HOST}:{port} after {timeout} s")


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGCONT)  # a stopped process handles SIGTERM only once continued
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
        for attempt in range(5):
            if attempt:
                self.port = free_port()
            self.proc = subprocess.Popen(
                self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=repo
            )
            _RUNNING.add(self.proc)
            try:
                _wait_port(self.port, self.proc)
                return self
            except PortTaken:
                _RUNNING.discard(self.proc)
                if attempt == 4:
                    raise
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)

    def pause(self) -> None:
        """SIGSTOP: the server accepts connections (the kernel does) but answers nothing, a stall."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause` (or a stall the server gave itself)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stalled(self) -> bool:
        """True while the server process is stopped (state T in /proc)."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

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


@contextmanager
def environ_restored(*keys: str) -> Iterator[None]:
    """Within the block ``keys`` of ``os.environ`` may change freely (a client pointed at a server, through
    a proxy, ...); on leaving, each is back as it was: its old value, or unset if it was unset."""
    saved = {k: os.environ.get(k) for k in keys}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class S3Server(_Process):
    """moto's S3-compatible server; :meth:`env` gives the environment a client needs (dummy credentials)."""

    KEY_ID, SECRET = "chammitestkey", "chammitestsecret"

    def __init__(self, stall_after: int | None = None, stall_path: str = "") -> None:
        super().__init__()
        self.stall_after, self.stall_path = stall_after, stall_path

    def command(self) -> list[str]:
        if self.stall_after is None:
            return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        stall = ["--stall-after", str(self.stall_after), "--stall-path", self.stall_path]
        return [sys.executable, "-m", "tests.servers", "moto", "--port", str(self.port), *stall]

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

    def __init__(
        self, root: Path, delay_ms: float = 0.0, stall_after: int | None = None, stall_path: str = ""
    ) -> None:
        super().__init__()
        self.root, self.delay_ms = Path(root), delay_ms
        self.stall_after, self.stall_path = stall_after, stall_path

    def command(self) -> list[str]:
        stall = [] if self.stall_after is None else ["--stall-after", str(self.stall_after)]
        if self.stall_after is not None:
            stall += ["--stall-path", self.stall_path]
        return _range_http(self.port, self.delay_ms, "--root", str(self.root), *stall)

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


class PlainHTTPServer(_Process):
    """``python -m http.server`` serving ``root``: no ``Range`` support, a 200 with the whole file."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = Path(root)

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            HOST,
            "--directory",
            str(self.root),
            str(self.port),
        ]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


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


def stall_middleware(app: Any, after: int, path: str) -> Any:
    """A WSGI app that stops its own process (SIGSTOP) on the first GET of a path containing ``path`` once
    ``after`` such requests were let through (uploads do not count); after SIGCONT it answers as ``app``
    would."""
    seen = [0]
    lock = threading.Lock()

    def wrapped(environ: dict, start_response: Any) -> Any:
        if environ.get("REQUEST_METHOD") == "GET" and path in environ.get("PATH_INFO", ""):  # reads only
            with lock:
                seen[0] += 1
                stall = seen[0] == after + 1
            if stall:
                os.kill(os.getpid(), signal.SIGSTOP)
        return app(environ, start_response)

    return wrapped


def _run_moto(port: int, stall_after: int, stall_path: str) -> None:
    """moto's S3 server (as ``python -m moto.server``) under :func:`stall_middleware`."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        HOST,
        port,
        stall_middleware(app, stall_after, stall_path),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


def _processes() -> dict[int, list[str]]:
    """{pid: the fields of /proc/pid/stat after the command name} of every live (not zombie) process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            out[int(entry.name)] = fields
    return out


def in_session(sid: int) -> list[int]:
    """Live processes of session ``sid`` (a command started with ``start_new_session=True`` has its pid as
    session id; its DataLoader workers stay in the session even when orphaned)."""
    return [pid for pid, fields in _processes().items() if int(fields[3]) == sid]


def descendants(pid: int) -> list[int]:
    """Live processes below ``pid`` (children, grandchildren, ...), from /proc; zombies excluded."""
    children: dict[int, list[int]] = {}
    for child, fields in _processes().items():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="moto's S3 server that stalls itself after N requests")
    parser.add_argument("server", choices=["moto"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stall-after", type=int, required=True)
    parser.add_argument("--stall-path", default="")
    a = parser.parse_args()
    _run_moto(a.port, a.stall_after, a.stall_path)

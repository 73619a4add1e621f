"""A static HTTP/1.1 file server with ``Range`` support and fault injection, and a latency-injecting TCP
proxy.

    python -m tests.range_http --root DIR --port N [--delay-ms MS] [--stall-after K [--stall-path P]]
    python -m tests.range_http --proxy TARGET_PORT --port N --delay-ms MS [--per-request]  # -> :TARGET_PORT

The server answers GET and HEAD with ``Accept-Ranges: bytes``; ``Range: bytes=a-b`` / ``a-`` / ``-n`` get 206.
Control endpoints (for tests): ``/_control/fault?count=N&kind=K&path=P`` makes the next N requests under P
fail (K: an HTTP status such as 503, 500, 403, 404; ``reset``: close without answering; ``truncate``: send
half the body, then close), ``/_control/corrupt?path=P&offset=O`` flips one byte of P as served,
``/_control/count`` returns the number of requests served. ``--stall-after K``: the server stops its own
process (SIGSTOP) on the first GET of a path containing P once K such requests were answered (a stall at
a known point; the test continues and stops it). Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

HOST = "127.0.0.1"


class State:
    def __init__(
        self, root: Path, delay_ms: float, stall_after: int | None = None, stall_path: str = ""
    ) -> None:
        self.root = root.resolve()
        self.delay = delay_ms / 1000.0
        self.stall_after, self.stall_path, self.stall_seen = stall_after, stall_path, 0
        self.lock = threading.Lock()
        self.faults: list[tuple[str, str]] = []  # (kind, path prefix), consumed in order
        self.corrupt: dict[str, set[int]] = {}
        self.count = 0


def make_handler(state: State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _control(self, url) -> None:
            q = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = b"ok"
            with state.lock:
                if url.path == "/_control/fault":
                    state.faults += [(q.get("kind", "503"), q.get("path", ""))] * int(q.get("count", "1"))
                elif url.path == "/_control/corrupt":
                    state.corrupt.setdefault(q["path"].lstrip("/"), set()).add(int(q["offset"]))
                elif url.path == "/_control/count":
                    body = str(state.count).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self, head: bool) -> None:
            url = urlparse(self.path)
            if url.path.startswith("/_control/"):
                return self._control(url)
            rel = unquote(url.path).lstrip("/")
            stall = False
            with state.lock:
                state.count += 1
                if state.stall_after is not None and not head and state.stall_path in rel:
                    state.stall_seen += 1
                    stall = state.stall_seen == state.stall_after + 1
                fault = next((f for f in state.faults if rel.startswith(f[1].lstrip("/"))), None)
                if fault is not None:
                    state.faults.remove(fault)
            if stall:
                os.kill(os.getpid(), signal.SIGSTOP)
            if state.delay:
                time.sleep(state.delay)
            if fault is not None and fault[0] == "reset":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if fault is not None and fault[0] not in ("truncate",):
                return self._error(int(fault[0]))
            path = (state.root / rel).resolve()
            if state.root not in path.parents or not path.is_file():
                return self._error(404)
            data = path.read_bytes()
            flips = state.corrupt.get(rel)
            if flips:
                buf = bytearray(data)
                for o in flips:
                    if o < len(buf):
                        buf[o] ^= 0xFF
                data = bytes(buf)
            start, end, status = 0, len(data), 200
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].split(",")[0].partition("-")
                if a == "":
                    start = max(0, len(data) - int(b))
                else:
                    start, end = int(a), (min(int(b) + 1, len(data)) if b else len(data))
                if start >= len(data) and len(data):
                    return self._error(416)
                status = 206
            body = data[start:end]
            self.send_response(status)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
            self.end_headers()
            if head:
                return
            if fault is not None and fault[0] == "truncate":
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(body)

        def _error(self, status: int) -> None:
            body = f"error {status}".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self._serve(head=False)

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve(head=True)

    return Handler


def serve(
    root: Path, port: int, delay_ms: float, stall_after: int | None = None, stall_path: str = ""
) -> None:
    server = ThreadingHTTPServer((HOST, port), make_handler(State(root, delay_ms, stall_after, stall_path)))
    server.daemon_threads = True
    server.serve_forever()


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    delay: float,
    turn: dict[str, bool] | None = None,
    answers: bool = False,
) -> None:
    """Copy one direction of a proxied connection. ``turn`` (per-request mode): the client's bytes are held
    ``delay`` only when they start a new request - on a new connection or after the server answered - not
    for every chunk of a large upload."""
    try:
        while data := await reader.read(1 << 16):
            if answers and turn is not None:
                turn["fresh"] = True
            elif delay and (turn is None or turn["fresh"]):
                await asyncio.sleep(delay)
                if turn is not None:
                    turn["fresh"] = False
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def _proxy(port: int, target: int, delay_ms: float, per_request: bool = False) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(HOST, target)
        except OSError:
            client_w.close()
            return
        turn = {"fresh": True} if per_request else None
        await asyncio.gather(
            _pipe(client_r, up_w, delay_ms / 1000.0, turn), _pipe(up_r, client_w, 0.0, turn, answers=True)
        )

    server = await asyncio.start_server(handle, HOST, port)
    async with server:
        await server.serve_forever()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", type=Path)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument(
        "--proxy", type=int, default=None, help="forward to this 127.0.0.1 port instead of serving files"
    )
    p.add_argument("--stall-after", type=int, default=None, help="SIGSTOP self after this many requests")
    p.add_argument("--stall-path", default="", help="count only requests for paths containing this")
    p.add_argument(
        "--per-request",
        action="store_true",
        help="proxy: hold each request once (not every 64 KiB chunk of an upload)",
    )
    a = p.parse_args()
    if a.proxy is not None:
        asyncio.run(_proxy(a.port, a.proxy, a.delay_ms, a.per_request))
    else:
        if a.root is None or not a.root.is_dir():
            raise SystemExit("--root must be a folder")
        serve(a.root, a.port, a.delay_ms, a.stall_after, a.stall_path)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

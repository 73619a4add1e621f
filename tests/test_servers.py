"""The test servers themselves: a server whose port another process takes before it binds is started again on
another port, never silently replaced by that other process's socket."""

from __future__ import annotations

import socket
import urllib.request

import tests.servers as servers
from tests.servers import HOST, HTTPServer


def test_a_port_taken_before_the_server_binds_it_is_not_mistaken_for_the_server(tmp_path, monkeypatch):
    (tmp_path / "hello.txt").write_text("hello")
    squatter = socket.socket()
    squatter.bind((HOST, 0))
    squatter.listen()  # answers connections on the port free_port handed out, as a dask worker might
    taken = squatter.getsockname()[1]
    ports = iter([taken])
    real = servers.free_port
    monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real())
    try:
        with HTTPServer(tmp_path) as srv:
            assert srv.port != taken
            with urllib.request.urlopen(f"{srv.url}/hello.txt", timeout=10) as answer:
                assert answer.read() == b"hello"
    finally:
        squatter.close()

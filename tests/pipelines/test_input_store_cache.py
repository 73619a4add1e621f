"""The per-process input stores of CHAMMI-75 and the benchmark adapters are keyed by the client environment
too: a store made while AWS_ENDPOINT_URL named one server is not reused for another (a test that started its
own server after an earlier one read from the dead one: connection refused)."""

from __future__ import annotations

import pytest

from chammi_data.store.objects import ObjectStore
from pipelines.sources.benchmarks.common import input_store
from pipelines.sources.chammi75.pipeline import _store as chammi75_store
from pipelines.steps.rawinput import bind, raw_input


def test_a_changed_endpoint_gets_a_new_store(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    first, first75 = input_store("s3://bucket/data", {}), chammi75_store("s3://bucket/data", "{}")
    assert input_store("s3://bucket/data", {}) is first  # same environment: connections reused
    assert chammi75_store("s3://bucket/data", "{}") is first75
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert input_store("s3://bucket/data", {}) is not first
    assert chammi75_store("s3://bucket/data", "{}") is not first75


def test_a_changed_endpoint_gets_a_new_client_and_a_new_bound_input(monkeypatch):
    """The fsspec client shared by the stores of a process, and the inputs the engine binds, are keyed by the
    environment too (CI: two CHAMMI-75 S3 builds after an earlier S3 test read from its dead server)."""
    pytest.importorskip("s3fs")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    fs = ObjectStore("s3://bucket/data").fs
    assert ObjectStore("s3://bucket/other").fs is fs  # same environment: one client
    bound = raw_input("s3://bucket/data")
    assert bind([bound]) == [bound] and raw_input("s3://bucket/data") is bound
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert ObjectStore("s3://bucket/data").fs is not fs
    assert raw_input("s3://bucket/data") is not bound

"""Helpers of the tests that build from and into other locations: buckets on moto's S3 server, the command
line with a server's environment, release trees by content."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def s3fs_of(server: Any) -> Any:
    """An s3fs filesystem on ``server`` with its credentials."""
    import s3fs

    return s3fs.S3FileSystem(
        key=server.KEY_ID,
        secret=server.SECRET,
        client_kwargs={"endpoint_url": server.endpoint},
        skip_instance_cache=True,
    )


def make_public(server: Any, bucket: str) -> None:
    """Let anyone read ``bucket`` (GET, HEAD, LIST), as the public raw-data buckets do; writes stay signed."""
    actions = ["s3:GetObject", "s3:HeadObject", "s3:ListBucket"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": actions,
                "Resource": [f"arn:aws:s3:::{bucket}/*", f"arn:aws:s3:::{bucket}"],
            }
        ],
    }
    s3fs_of(server).call_s3("put_bucket_policy", Bucket=bucket, Policy=json.dumps(policy))


def chammi_build(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m chammi_cli.build ARGS`` with ``env`` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "chammi_cli.build", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def local_release(root: Path) -> dict[str, str]:
    """{path: sha256} of a release folder's files (the work folder and the build report left out)."""
    from tests.pipelines.conftest import tree_hashes

    return tree_hashes(root)


def bucket_release(fs: Any, url: str) -> tuple[dict[str, str], str]:
    """({path: sha256} of the committed generation's files, generation) of a release in a bucket."""
    base = url.split("://", 1)[1].rstrip("/")
    gen = json.loads(fs.cat_file(f"{base}/release.json"))["extra"]["generation"]
    out = {}
    for key in sorted(fs.find(f"{base}/{gen}")):
        out[key[len(f"{base}/{gen}/") :]] = hashlib.sha256(fs.cat_file(key)).hexdigest()
    return out, gen

"""Where the credentials of a remote release come from, in words that never include a secret.

Used in every error about a refused or missing remote object, so a user can see which identity was used
(an environment variable, a profile, storage options, anonymous access) and which endpoint was asked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def credentials_source(protocol: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Where the credentials for ``protocol`` come from, in words, without any secret."""
    opts = dict(storage_options or {})
    if protocol in ("s3", "s3a"):
        endpoint = (
            opts.get("endpoint_url")
            or (opts.get("client_kwargs") or {}).get("endpoint_url")
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or "AWS default"
        )
        if opts.get("anon"):
            who = "anonymous access (storage_options anon=True)"
        elif opts.get("key") or opts.get("secret"):
            who = "storage_options key/secret"
        elif opts.get("profile"):
            who = f"AWS profile {opts['profile']!r} (storage_options)"
        elif os.environ.get("AWS_ACCESS_KEY_ID"):
            key = os.environ["AWS_ACCESS_KEY_ID"]
            who = (
                f"environment variable AWS_ACCESS_KEY_ID ({key[:4]}...{key[-2:]})"
                if len(key) > 8
                else "environment variable AWS_ACCESS_KEY_ID"
            )
        elif os.environ.get("AWS_PROFILE"):
            who = f"AWS profile {os.environ['AWS_PROFILE']!r} (AWS_PROFILE)"
        else:
            who = "the default AWS credential chain (config files, instance role)"
        return f"{who}; endpoint {endpoint}"
    if protocol in ("gs", "gcs"):
        if opts.get("token") == "anon":
            return "anonymous access (storage_options token='anon')"
        if opts.get("token"):
            return "storage_options token"
        if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            return f"GOOGLE_APPLICATION_CREDENTIALS ({os.environ['GOOGLE_APPLICATION_CREDENTIALS']})"
        return "the default Google credentials (gcloud, metadata server)"
    if protocol in ("http", "https"):
        headers = (opts.get("client_kwargs") or {}).get("headers") or opts.get("headers") or {}
        return (
            f"HTTP headers {sorted(headers)} (storage_options)" if headers else "no credentials (plain HTTP)"
        )
    return f"the {protocol or 'local'} filesystem's defaults" + (" with storage_options" if opts else "")


#: Environment variables that choose the endpoint, region and identity a storage client uses.
CLIENT_ENV_VARS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


def client_environment() -> str:
    """A digest of the variables of :data:`CLIENT_ENV_VARS`: a cache of stores keyed by location must also
    key by it, or a store made for one endpoint (an old server, another account) is reused for another."""
    import hashlib

    text = "\n".join(f"{k}={os.environ.get(k, '')}" for k in CLIENT_ENV_VARS)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

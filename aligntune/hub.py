"""Hugging Face Hub reachability, checked before anything waits on the network.

On a machine without network, `from_pretrained("Qwen/Qwen3-0.6B")` retries for a long time. We
look in the local cache first, then probe the hub's endpoint with a short timeout, and fail with
a message that says what to use instead.
"""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlparse

from aligntune.errors import ConfigError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
PROBE_TIMEOUT_S = 3.0


def looks_like_hub_id(name: str) -> bool:
    return bool(HUB_ID.match(name)) and not name.endswith((".json", ".jsonl", ".csv", ".parquet", ".py"))


def is_cached(repo_id: str, repo_type: str) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, repo_type=repo_type, local_files_only=True)
        return True
    except Exception:  # not cached (or a partial cache): the hub is needed
        return False


def _endpoint() -> tuple[str, int]:
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return url.hostname or "", url.port or (443 if url.scheme == "https" else 80)


def hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False
    host, port = _endpoint()
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def require(repo_id: str, repo_type: str, key: str, instead: str) -> None:
    """Raise a ConfigError unless `repo_id` is cached locally or the hub can be reached."""
    if is_cached(repo_id, repo_type) or hub_reachable():
        return
    raise ConfigError(
        f"{key}={repo_id!r} is a Hugging Face Hub {repo_type}, it is not in the local cache, and the hub cannot be "
        "reached from this machine (no network, or HF_HUB_OFFLINE=1).",
        f"{instead} Or download it where there is network and copy the Hugging Face cache here.",
    )

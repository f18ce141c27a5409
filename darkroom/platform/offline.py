"""Is the model hub reachable? Asked once per command, so that with no network every missing
weight fails at once with the reason instead of after tens of seconds of hub retries.

With the hub unreachable (and HF_HUB_OFFLINE not set either way), HF_HUB_OFFLINE=1 is set for
this process and what it starts (a local Ray's workers inherit it): the Hugging Face libraries
then look only in their local cache, and a weight that is not there fails at once.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_SECONDS = 3.0
REASON_ENV = "DARKROOM_OFFLINE_REASON"  # why HF_HUB_OFFLINE was set, for error messages


def detect_offline() -> str | None:
    """Set HF_HUB_OFFLINE=1 when the hub cannot be reached; returns the reason, or None when it
    can (or the user already decided with HF_HUB_OFFLINE)."""
    if "HF_HUB_OFFLINE" in os.environ:
        return os.environ.get(REASON_ENV)
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
        return None
    except OSError as err:
        reason = f"the model hub ({host}) is unreachable: {err.strerror or err}"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ[REASON_ENV] = reason
    return reason


def offline_reason() -> str | None:
    """Why this command works offline, if it found the hub unreachable."""
    return os.environ.get(REASON_ENV)

"""Whether the Hugging Face hub can be used now, asked once per process: the checks that run before any model
loads (a registry task's dataset, a hub model's config) would otherwise wait out the hub clients' own retries
(datasets and transformers each retry an unreachable hub for ~24 s before giving up)."""

from __future__ import annotations

import functools
import os
import threading
from urllib.error import HTTPError
from urllib.request import Request, build_opener

HUB = "https://huggingface.co"
PROBE_SECONDS = 3.0  # the clients' own retries take ~24 s; a hub that answers at all answers well within this
TRUE = {"1", "ON", "YES", "TRUE"}  # what huggingface_hub and datasets read as a set flag


def offline_reason() -> str | None:
    """Why the hub cannot be used now ('HF_HUB_OFFLINE is set', 'https://huggingface.co does not answer ...'),
    or None."""
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(flag, "").upper() in TRUE:
            return f"{flag} is set"
    endpoint = os.environ.get("HF_ENDPOINT") or HUB
    return None if answers(endpoint) else f"{endpoint} does not answer within {PROBE_SECONDS:g} s"


@functools.cache
def answers(url: str, timeout: float = PROBE_SECONDS) -> bool:
    """Some HTTP answer (any status) to a HEAD request within `timeout` seconds, certificates checked and the
    environment's proxies used, as the hub client would reach it. Not a bare TCP connect: a transparent proxy
    accepts those for any address (seen on this kind of machine). In a thread, since name resolution has no
    timeout of its own. Cached per process: a sweep validates every cell."""
    answered = []

    def ask():
        try:
            build_opener().open(Request(url, method="HEAD"), timeout=timeout).close()
            answered.append(True)
        except HTTPError:  # an error status is still an answer
            answered.append(True)
        except (OSError, ValueError):  # no route, no name, refused, timed out, TLS failed; a malformed URL
            pass

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)

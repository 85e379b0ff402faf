"""Keep credentials out of what Lepton writes: tags, params, logs, reports and the terminal."""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@host -> scheme://user:***@host
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^/\s:@]*):(?P<secret>[^@\s/]+)@")
# ?password=...&token=... in connection strings and URLs
_QUERY = re.compile(r"(?P<head>[?&;](?:password|passwd|pwd|token|secret|access_key|secret_key|api_key|key|sig|signature)=)(?P<secret>[^&;\s]+)", re.IGNORECASE)
MASK = "***"


def redact(text: str) -> str:
    """``text`` with the passwords of URLs and secret query parameters masked."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def redacted(value: Any) -> Any:
    """``value`` (strings, lists, dicts of them, nested) with every string redacted."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redacted(v) for v in value)
    return value

"""Keep credentials out of what Lepton writes: tags, params, logs, reports and the terminal."""

from __future__ import annotations

import logging
import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

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


def credentials_out_of_uri(uri: str, environ: MutableMapping[str, str], *, overwrite: bool = True) -> str:
    """``uri`` without the ``user:password@`` of an http(s) MLflow URI, which go to MLFLOW_TRACKING_USERNAME/PASSWORD.

    MLflow sends those as basic auth just as it would the URL's own, but then no request
    URL, and so no exception a library raises about one, carries the password.
    ``overwrite``: the URI's credentials replace any already in ``environ`` (else those win).
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return uri
    for var, value in (("MLFLOW_TRACKING_USERNAME", unquote(parts.username or "")), ("MLFLOW_TRACKING_PASSWORD", unquote(parts.password))):
        if overwrite or var not in environ:
            environ[var] = value
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def credentials_out_of_uris(environ: MutableMapping[str, str]) -> None:
    """The MLflow URIs of the environment without their credentials (see ``credentials_out_of_uri``); set ones win."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        if var in environ:
            environ[var] = credentials_out_of_uri(environ[var], environ, overwrite=False)


class RedactFilter(logging.Filter):
    """Masks credentials in a record's message and traceback before a handler writes them anywhere."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it when the handler formats it
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _FORMAT.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FORMAT = logging.Formatter()


def mask_logging(*handlers: logging.Handler) -> None:
    """Add a ``RedactFilter`` to ``handlers``, or to every handler configured now (Prefect's console and API, DVC's, Lepton's)."""
    if not handlers:
        loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
        handlers = tuple(h for lg in loggers for h in lg.handlers)
    for handler in handlers:
        if not any(isinstance(f, RedactFilter) for f in handler.filters):
            handler.addFilter(RedactFilter())

"""Who may do what: session and job tokens (stored only as hashes, compared in constant time), the bearer
header, and the API key that guards creating sessions and jobs. Pure functions; app.py turns a refusal into
its HTTP / WebSocket answer."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Literal, Protocol

from .protocol import TOKEN_SUBPROTOCOL_PREFIX

Role = Literal["stream", "watch"]


class TokenHolder(Protocol):
    """A session: the hashes of its stream token and of its read-only watch token."""

    token_hash: str
    watch_hash: str


def token_hash(token: str) -> str:
    """What is stored of a token (the token itself is returned once at creation, then forgotten)."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(candidate: str | None, stored_hash: str) -> bool:
    """Constant-time check of a presented token against a stored hash."""
    if not candidate:
        return False
    return hmac.compare_digest(token_hash(candidate), stored_hash)


def bearer(auth_header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, if that is what it holds."""
    if auth_header and auth_header.lower().startswith("bearer "):
        return auth_header[7:].strip()
    return None


def presented_token(query_token: str | None, headers: Mapping[str, str]) -> str | None:
    """A token given as ``?token=`` or as a bearer header (the query wins)."""
    return query_token or bearer(headers.get("authorization"))


def subprotocol_token(offered: Iterable[str]) -> str | None:
    """The token a WebSocket client offered as the subprotocol ``spann3r.token.TOKEN`` (browsers can set no
    header on a WebSocket; the subprotocol list is the one header they send that is not a URL)."""
    for name in offered:
        if name.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return name[len(TOKEN_SUBPROTOCOL_PREFIX) :] or None
    return None


def websocket_token(offered: Iterable[str], headers: Mapping[str, str], query_token: str | None) -> str | None:
    """A WebSocket's token: the subprotocol, else a bearer header, else ``?token=`` (old clients only)."""
    return subprotocol_token(offered) or bearer(headers.get("authorization")) or query_token


def session_role(session: TokenHolder, token: str | None) -> Role | None:
    """What ``token`` may do with ``session``: stream (read-write), watch (read-only), or nothing."""
    if token_matches(token, session.token_hash):
        return "stream"
    if token_matches(token, session.watch_hash):
        return "watch"
    return None


def api_key_valid(headers: Mapping[str, str], api_key: str | None) -> bool:
    """Whether a request may create sessions and jobs: no key configured, or the right one in ``X-API-Key``
    or a bearer header (compared in constant time)."""
    if api_key is None:
        return True
    given = headers.get("x-api-key") or bearer(headers.get("authorization")) or ""
    return hmac.compare_digest(given.encode(), api_key.encode())


# ------------------------------------------------------------------ tokens never reach a log

_TOKEN_IN_URL = re.compile(r"(token=)[^&\s\"'#]+", re.IGNORECASE)
REDACTED = "[redacted]"


def redact_tokens(text: str) -> str:
    """``text`` with the value of every ``token=`` (and ``session_token=``) query parameter replaced."""
    return _TOKEN_IN_URL.sub(r"\g<1>" + REDACTED, text)


class RedactTokens(logging.Filter):
    """Redacts query-string tokens in a log record's message and arguments (uvicorn's access log prints the
    URL with its query; the arguments stay a tuple of the same shape, which its formatter unpacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_tokens(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_tokens(a) if isinstance(a, str) else a for a in record.args)
        return True


LOGGERS_WITH_URLS = ("uvicorn.access", "uvicorn.error")


def redact_tokens_in_logs(loggers: Iterable[str] = LOGGERS_WITH_URLS) -> None:
    """Install ``RedactTokens`` on the loggers that print request URLs (once each; uvicorn's logging config
    replaces handlers, not filters)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())

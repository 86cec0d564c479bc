"""Who may do what: session and job tokens (stored only as hashes, compared in constant time), the bearer
header, and the API key that guards creating sessions and jobs. Pure functions; app.py turns a refusal into
its HTTP / WebSocket answer."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal, Protocol

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

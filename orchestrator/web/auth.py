"""Bearer tokens and their roles (`ORCH_WEB_TOKENS`: `token=role,token2=role2`).

`read` may use the GET endpoints; `operator` may also act (start, cancel, retry, correlate).
A presented token is compared with every configured one by `hmac.compare_digest`, all of
them each time, so neither a match nor its position shows in the time taken.
"""

from __future__ import annotations

import hmac
from typing import Literal

Role = Literal["read", "operator"]
ROLES: tuple[Role, ...] = ("read", "operator")
#: What each role may do, by the role an endpoint needs.
_GRANTS: dict[Role, frozenset[Role]] = {
    "read": frozenset({"read", "operator"}),
    "operator": frozenset({"operator"}),
}
#: Tokens shorter than this are refused when read: they could be guessed.
MIN_TOKEN_LENGTH = 8


class TokenConfigError(ValueError):
    """ORCH_WEB_TOKENS is malformed."""


def parse_tokens(text: str | None) -> list[tuple[bytes, Role]]:
    """`token=role,token2=role2` as (token, role) pairs; None or blank: no tokens."""
    pairs: list[tuple[bytes, Role]] = []
    seen: set[str] = set()
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        token, sep, role = item.rpartition("=")
        token, role = token.strip(), role.strip()
        if not sep or not token:
            raise TokenConfigError("ORCH_WEB_TOKENS: each entry is token=role")
        if role not in ROLES:
            raise TokenConfigError(f"ORCH_WEB_TOKENS: unknown role {role!r} (read or operator)")
        if len(token) < MIN_TOKEN_LENGTH:
            raise TokenConfigError(
                f"ORCH_WEB_TOKENS: a token must be at least {MIN_TOKEN_LENGTH} characters"
            )
        if token in seen:
            raise TokenConfigError("ORCH_WEB_TOKENS: a token is listed twice")
        seen.add(token)
        pairs.append((token.encode(), "operator" if role == "operator" else "read"))
    return pairs


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def role_of(token: str | None, tokens: list[tuple[bytes, Role]]) -> Role | None:
    """The role of a presented token, None if it is not one of `tokens`."""
    if token is None:
        return None
    presented = token.encode("utf-8", "surrogateescape")
    found: Role | None = None
    for known, role in tokens:  # no early exit: every token is compared
        if hmac.compare_digest(presented, known):
            found = role
    return found


def permits(role: Role, needed: Role) -> bool:
    return role in _GRANTS[needed]

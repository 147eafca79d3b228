"""Bearer tokens and roles: who may read (viewer), judge (analyst) and configure (admin).

A token is never kept, logged or echoed: the table holds SHA-256 digests, and a presented token is
hashed and compared with ``hmac.compare_digest`` against *every* configured digest (equal lengths,
no early exit), so neither content nor position leaks through timing. A principal's ``name`` —
the optional third field of an entry, else ``<role>-<n>`` by position — is what logs and the
audit trail show.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ConfigError, Forbidden, Unauthorized


class Role(IntEnum):
    """Each role can do everything the lower ones can."""

    VIEWER = 1
    ANALYST = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a name for logs and the audit trail, and a role."""

    name: str
    role: Role


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes = field(repr=False)
    principal: Principal


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """The configured tokens, as digests, and the constant-time lookup of a presented one."""

    def __init__(self, entries: Iterable[tuple[str, Principal]]) -> None:
        self._entries = [_Entry(_digest(token), principal) for token, principal in entries]

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"TokenTable({len(self._entries)} tokens)"

    @classmethod
    def parse(cls, text: str, source: str = "FRAUD_API_TOKENS") -> TokenTable:
        """Read ``token:role[:name]`` entries separated by commas or lines; ``#`` starts a comment.

        Error messages name the entry by position and never quote it: it holds a secret.
        """
        entries: list[tuple[str, Principal]] = []
        names: set[str] = set()
        items = [
            item.strip()
            for line in text.splitlines()
            for item in line.split("#", 1)[0].split(",")
            if item.strip()
        ]
        for n, item in enumerate(items, 1):
            parts = [p.strip() for p in item.split(":")]
            if len(parts) not in (2, 3) or not parts[0]:
                raise ConfigError(f"{source}: entry {n} is not token:role[:name]")
            token, role_text = parts[0], parts[1].lower()
            try:
                role = Role[role_text.upper()]
            except KeyError:
                raise ConfigError(
                    f"{source}: entry {n} has role {role_text[:20]!r}; expected viewer, analyst "
                    "or admin"
                ) from None
            name = parts[2] if len(parts) == 3 and parts[2] else f"{role.label}-{n}"
            if name in names:
                raise ConfigError(f"{source}: entry {n} repeats the name {name!r}")
            names.add(name)
            entries.append((token, Principal(name, role)))
        return cls(entries)

    @classmethod
    def load(cls, tokens: str, tokens_file: Path | None) -> TokenTable:
        """The tokens of the environment variable and of the file, together."""
        table = cls.parse(tokens, "FRAUD_API_TOKENS")
        if tokens_file is not None:
            try:
                text = tokens_file.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"FRAUD_API_TOKENS_FILE: cannot read {tokens_file}: {exc.strerror}"
                ) from None
            extra = cls.parse(text, f"FRAUD_API_TOKENS_FILE ({tokens_file})")
            clash = {e.principal.name for e in table._entries} & {
                e.principal.name for e in extra._entries
            }
            if clash:
                raise ConfigError(f"token names used twice: {sorted(clash)}")
            table._entries += extra._entries
        return table

    def authenticate(self, presented: str) -> Principal | None:
        """The principal whose token this is, or None; the same work whatever the answer."""
        digest = _digest(presented)
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.principal
        return found


bearer = HTTPBearer(
    auto_error=False,
    description="`Authorization: Bearer <token>`; roles viewer < analyst < admin.",
)


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency that lets a request through only with a valid token of ``role`` or above."""

    async def principal_with_role(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> Principal:
        if credentials is None:
            raise Unauthorized()
        tokens: TokenTable = request.app.state.api.tokens
        principal = tokens.authenticate(credentials.credentials)
        if principal is None:
            raise Unauthorized("the bearer token is not valid")
        request.state.principal = principal
        if principal.role < role:
            raise Forbidden(
                f"this needs the {role.label} role; the token's role is {principal.role.label}"
            )
        return principal

    return principal_with_role

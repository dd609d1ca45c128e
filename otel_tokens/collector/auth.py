"""Who may talk to the collector: a bearer token read from a file, compared in constant time.

One token file guards every listener (OTLP/HTTP, OTLP/gRPC, the API); `/metrics` may have its own
so Prometheus holds a credential that cannot write. HTTP sends `Authorization: Bearer <token>`, gRPC
the same `authorization` metadata, as the OTLP exporters do with `OTEL_EXPORTER_OTLP_HEADERS`.
"""

from __future__ import annotations

import hmac

__all__ = ["BearerToken", "TokenFileError"]

_PREFIX = "bearer "


class TokenFileError(OSError):
    """The token file cannot be used; the message names the file and the key that set it."""


class BearerToken:
    """A secret from a file (surrounding whitespace, e.g. a trailing newline, is not part of it)."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    @classmethod
    def from_file(cls, path: str, key: str) -> BearerToken:
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise TokenFileError(f"{key}: cannot read token file {path}: {reason}") from None
        if not secret or any(c.isspace() for c in secret):
            raise TokenFileError(f"{key}: token file {path} must hold one token with no spaces, got "
                                 f"{'nothing' if not secret else 'whitespace inside'}")  # fmt: skip
        return cls(secret)

    def accepts(self, authorization: str | None) -> bool:
        """True when `authorization` is `Bearer <this token>` (scheme case-insensitive)."""
        if not authorization or authorization[: len(_PREFIX)].lower() != _PREFIX:
            return False
        offered = authorization[len(_PREFIX) :].strip().encode("utf-8", "replace")
        return hmac.compare_digest(offered, self._secret)

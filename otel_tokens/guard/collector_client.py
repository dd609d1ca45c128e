"""The guard's HTTP client for the collector's API: JSON over one kept-alive connection.

Standard library only (`http.client`): the guard runs inside the agent, whose HTTP stack is its
own business, and these are a few small requests. One `CollectorClient` per thread that uses it
(a connection is not thread-safe); every failure — refused, timed out, a non-2xx answer, a body
that is not JSON — is one `CollectorError` whose message says what to check.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.parse
from typing import Any

__all__ = ["CollectorClient", "CollectorError"]

#: The largest answer read (the budgets and stop orders of a big budget file fit many times over).
_MAX_ANSWER_BYTES = 8 * 1024 * 1024


class CollectorError(Exception):
    """The collector did not give a usable answer; the message is the reason, for the log."""


class CollectorClient:
    def __init__(self, url: str, token: str | None, timeout: float) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"collector url must be http(s)://host[:port], got {url!r}")
        self.url = url.rstrip("/")
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._base = parsed.path.rstrip("/")
        self._timeout = timeout
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self._timeout, context=ssl.create_default_context()
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        return self._conn

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """Send one request and return the decoded JSON answer; a stale kept-alive connection is
        retried once on a fresh one."""
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, self._base + path, body=data, headers=self._headers)
                response = conn.getresponse()
                raw = response.read(_MAX_ANSWER_BYTES + 1)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if attempt == 2:
                    raise CollectorError(f"{type(exc).__name__}: {exc}") from None
                continue
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise CollectorError(f"{type(exc).__name__}: {exc or 'no answer'}") from None
            return self._decode(response.status, raw, path)
        raise AssertionError("unreachable")

    def _decode(self, status: int, raw: bytes, path: str) -> Any:
        if status == 401:
            raise CollectorError(
                "401 Unauthorized: the collector wants a bearer token; set guard.collector.auth_token_file "
                "or OTEL_TOKENS_COLLECTOR_AUTH_TOKEN_FILE to the file holding it"
            )
        if status == 404 and path.startswith("/api/v1/budgets"):
            raise CollectorError("404: the collector tracks no budgets; start it with the same budgets_file")
        if not 200 <= status < 300:
            raise CollectorError(f"HTTP {status} on {path}: {raw[:300].decode('utf-8', 'replace').strip()}")
        if len(raw) > _MAX_ANSWER_BYTES:
            raise CollectorError(f"answer to {path} larger than {_MAX_ANSWER_BYTES} bytes")
        try:
            return json.loads(raw)
        except ValueError:
            raise CollectorError(f"answer to {path} is not JSON") from None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

"""The ports the demo's embedded collector listens on, each with the flag that moves it.

`otel-tokens demo` starts a collector on the collector's default ports; when one is taken (another
collector, a second demo) the user must learn which port and how to move it, not read an `Errno 98`
traceback. One table serves the CLI (a flag per port) and the error message.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoPort:
    attr: str  # the CollectorConfig field
    flag: str
    what: str
    default: int


DEMO_PORTS: tuple[DemoPort, ...] = (
    DemoPort("http_port", "--http-port", "OTLP/HTTP", 4318),
    DemoPort("grpc_port", "--grpc-port", "OTLP/gRPC", 4317),
    DemoPort("metrics_port", "--metrics-port", "/metrics", 9464),
)


class PortInUse(Exception):
    """A port the demo needs is taken; the message names it and the flag that moves it."""

    def __init__(self, port: int, flag: str, what: str) -> None:
        super().__init__(
            f"port {port} ({what}) is already in use — is another collector or demo running? "
            f"Stop it, or move this one with {flag} N (0 picks a free port)."
        )
        self.port = port
        self.flag = flag


def is_free(host: str, port: int) -> bool:
    """Whether a listener could bind `host:port` now (as the collector's servers do, reuse-address)."""
    if port == 0:
        return True
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno not in (errno.EADDRINUSE, errno.EACCES)
    return True


def busy_port(
    host: str, chosen: Mapping[str, int], ports: Iterable[DemoPort] = DEMO_PORTS
) -> PortInUse | None:
    """The first of the demo's ports that is taken, as the error to show; None when all are free."""
    for port in ports:
        number = chosen.get(port.attr, port.default)
        if not is_free(host, number):
            return PortInUse(number, port.flag, port.what)
    return None

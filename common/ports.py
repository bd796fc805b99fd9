"""Listening addresses that refuse to be shared: a busy port is an error naming its holder.

gRPC Python sets SO_REUSEPORT on its listening sockets by default, so a second daemon on a
port that is in use starts without complaint and the kernel splits the connections between
the two (a `forsaken forget` could reach the wrong node). Every forsaken server therefore
passes `GRPC_NO_PORT_SHARING` and checks its address with `ensure_free` first, whose error
says which process holds the port, found through /proc/net/tcp{,6} and /proc/*/fd.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from forsaken.common.errors import ConfigError

# gRPC server option: do not set SO_REUSEPORT, so binding a port in use fails.
GRPC_NO_PORT_SHARING: tuple[str, int] = ("grpc.so_reuseport", 0)

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


class PortInUse(ConfigError):
    """The address is already bound by another socket (named in the message when visible)."""


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that holds a listening socket."""

    pid: int
    command: str

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def split_address(address: str) -> tuple[str, int]:
    """(host, port) of ``host:port`` or ``[v6]:port``; ConfigError for anything else."""
    text = address.strip()
    for prefix in ("ipv4:", "ipv6:", "dns:///", "dns:"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
            break
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or not port_text:
            raise ConfigError(f"{address!r} is not an address of the form [host]:port")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ConfigError(f"{address!r} is not an address of the form host:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{address!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{address!r}: the port must be in 0..65535")
    return host, port


def ensure_free(address: str, what: str) -> None:
    """Raise PortInUse if `address` cannot be bound for listening; port 0 always passes.

    The probe binds with SO_REUSEADDR (so connections of a previous run in TIME_WAIT do not
    count) and without SO_REUSEPORT (so a listener that allows sharing still counts), exactly
    as our gRPC servers bind with `GRPC_NO_PORT_SHARING`.
    """
    host, port = split_address(address)
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {address} ({what}): {exc.strerror}") from None
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                with contextlib.suppress(OSError):
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise in_use(address, what) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ConfigError(
                        f"cannot listen on {address} ({what}): {host} is not an address of "
                        "this machine"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise ConfigError(
                        f"cannot listen on {address} ({what}): port {port} needs privileges; "
                        "use a port above 1023"
                    ) from None
                raise ConfigError(f"cannot listen on {address} ({what}): {exc.strerror}") from None


def in_use(address: str, what: str) -> PortInUse:
    """The error for a busy `address`, naming the processes that listen on its port."""
    _, port = split_address(address)
    holders = listeners(port)
    if holders:
        by = "; it is held by " + ", ".join(str(h) for h in holders)
    else:
        by = " (by a process this user cannot see)"
    return PortInUse(
        f"cannot listen on {address} ({what}): the address is already in use{by}. Stop that "
        "process or choose another port"
    )


def listeners(port: int, proc: Path = Path("/proc")) -> list[Holder]:
    """Processes with a listening TCP socket on `port` (IPv4 or IPv6), as far as /proc shows."""
    inodes = _listening_inodes(port, proc)
    if not inodes:
        return []
    found: list[Holder] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:  # gone, or not ours to look at
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append(Holder(int(entry.name), _command(entry)))
                break
    return sorted(found, key=lambda h: h.pid)


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (proc / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port:
                inodes.add(fields[9])
    return inodes


def _command(entry: Path) -> str:
    try:
        raw = (entry / "cmdline").read_bytes()
    except OSError:
        return ""
    words = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
    text = " ".join(words)
    return text if len(text) <= 160 else text[:157] + "..."

"""`python -m forsaken.health`: the container health probe of both daemons.

The image's HEALTHCHECK and the Kubernetes probes run it. Without options it checks what the
environment names, so one image-wide command fits every container:

- a server (the default): the standard gRPC health service (grpc.health.v1.Health) at
  FORSAKEN_HEALTH_TARGET (default 127.0.0.1:7070), over mutual TLS when FORSAKEN_HEALTH_TLS_DIR
  names a folder with cert.pem, key.pem and ca.pem (the server's own set works: its
  certificate allows client auth and names 127.0.0.1), plaintext otherwise;
- a client daemon, when FORSAKEN_HEALTH_OWNER names its --state-dir: its Owner API (address
  in STATE_DIR/owner_address) answers a Status call. A client that cannot reach the server is
  still healthy: it is retrying, and restarting it would not help.

Exit status 0 healthy, 1 not, with one line saying why (probes keep the last lines).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_TARGET = "127.0.0.1:7070"


def server_healthy(target: str, tls_dir: Path | None, timeout_s: float) -> tuple[bool, str]:
    from forsaken.common.errors import ConfigError
    from forsaken.common.tls import channel_credentials, health_check

    try:
        credentials = channel_credentials(tls_dir) if tls_dir is not None else None
    except (ConfigError, OSError, ValueError) as exc:
        return False, f"cannot load TLS credentials from {tls_dir}: {exc}"
    if health_check(target, credentials, timeout_s=timeout_s):
        return True, f"server at {target} is SERVING"
    return False, f"server at {target} is not SERVING (unreachable, TLS refused, or stopping)"


def client_healthy(state_dir: Path, timeout_s: float) -> tuple[bool, str]:
    import grpc

    from forsaken.v1 import owner_pb2, owner_pb2_grpc

    address_file = state_dir / "owner_address"
    try:
        address = address_file.read_text().strip()
    except OSError:
        return False, f"{address_file} is missing: the client daemon has not started"
    with grpc.insecure_channel(address) as channel:
        try:
            status = owner_pb2_grpc.OwnerStub(channel).Status(
                owner_pb2.OwnerStatusRequest(), timeout=timeout_s
            )
        except grpc.RpcError as exc:
            return False, f"Owner API at {address}: {exc.code().name}"
    link = "connected to" if status.connected else "retrying"
    return True, f"client {status.node_id[:12]} answers on {address}, {link} {status.server}"


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="python -m forsaken.health", description=__doc__.split("\n\n")[0]
    )
    p.add_argument(
        "--owner",
        type=Path,
        default=_env_path("FORSAKEN_HEALTH_OWNER"),
        metavar="STATE_DIR",
        help="check the client daemon with this --state-dir (env FORSAKEN_HEALTH_OWNER)",
    )
    p.add_argument(
        "--target",
        default=env.get("FORSAKEN_HEALTH_TARGET") or DEFAULT_TARGET,
        help="server address (env FORSAKEN_HEALTH_TARGET; default %(default)s)",
    )
    p.add_argument(
        "--tls-dir",
        type=Path,
        default=_env_path("FORSAKEN_HEALTH_TLS_DIR"),
        help="cert.pem, key.pem and ca.pem for mutual TLS (env FORSAKEN_HEALTH_TLS_DIR)",
    )
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default %(default)s)")
    args = p.parse_args(argv)
    if args.owner is not None:
        ok, why = client_healthy(args.owner, args.timeout)
    else:
        ok, why = server_healthy(args.target, args.tls_dir, args.timeout)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

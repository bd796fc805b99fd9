"""`forsaken certs`: make the federation's TLS certificates (see `forsaken.common.certs`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from forsaken.common.certs import (
    DEFAULT_CA_DAYS,
    DEFAULT_DAYS,
    Entry,
    init_federation,
    issue_for_node,
)

_LAYOUT = """\
files written under --out:
  ca.pem, ca.key                      the federation CA (ca.key is mode 0600: keep it offline)
  server/{cert,key,ca}.pem            for the server's --tls-cert, --tls-key, --tls-ca
  clients/client-<i>/                 a client's --state-dir: node_key.ed25519 (its identity)
                                      and {cert,key,ca}.pem whose CN is that node's id
  operators/<name>/{cert,key,ca}.pem  Admin API credentials (CN operator:<name>)

Running init again is safe: the CA, the node keys and every still-valid certificate are kept,
and only what is missing (new clients, operators, host names) is issued. --force makes a new
CA and reissues every certificate, keeping the node keys."""


def add_certs_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    init = sub.add_parser(
        "init",
        help="create a CA and certificates for a server, N clients and operators",
        description="Create a federation's certificate authority and the TLS certificates of\n"
        "its server, N client daemons (each with a new node identity key; the certificate's\n"
        "CN is that node's id) and its operators. Keys are ECDSA P-256, private keys mode 0600.",
        epilog=_LAYOUT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory to write (created)"
    )
    init.add_argument(
        "--server-host",
        dest="server_hosts",
        action="append",
        required=True,
        metavar="HOST",
        help="DNS name or IP address clients dial the server by; repeat for several "
        "(localhost, 127.0.0.1 and ::1 are always added)",
    )
    init.add_argument(
        "--clients", type=int, required=True, metavar="N", help="number of client daemons"
    )
    init.add_argument(
        "--operator",
        dest="operators",
        action="append",
        metavar="NAME",
        help="operator certificate for the Admin API; repeat for several (default: admin)",
    )
    _days_argument(init)
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA and reissue every certificate (node keys are kept)",
    )

    issue = sub.add_parser(
        "issue",
        help="issue a client certificate for an existing client state directory",
        description="Issue a client certificate for the node key in an existing client state "
        "directory (the CN is that node's id) and write cert.pem, key.pem and ca.pem next to "
        "it. The node key must exist: start the client once, or use `certs init`.",
    )
    issue.add_argument(
        "--ca",
        type=Path,
        required=True,
        metavar="DIR",
        help="directory holding ca.pem and ca.key (the --out of `certs init`)",
    )
    issue.add_argument(
        "--state-dir",
        type=Path,
        required=True,
        metavar="CLIENT_STATE_DIR",
        help="the client daemon's --state-dir, holding node_key.ed25519",
    )
    _days_argument(issue)


def run_certs(args: argparse.Namespace) -> int:
    if args.certs_command == "init":
        layout = init_federation(
            args.out,
            args.server_hosts,
            args.clients,
            args.operators or ("admin",),
            days=args.days,
            force=args.force,
        )
        _print_table(layout.entries, f"federation certificates in {layout.root}")
    else:
        entry = issue_for_node(args.ca, args.state_dir, args.days)
        _print_table((entry,), f"client certificate in {entry.directory}")
    return 0


def _days_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--days",
        type=int,
        default=DEFAULT_DAYS,
        metavar="D",
        help=f"validity of the certificates issued, in days (default: %(default)s; a new CA "
        f"gets {DEFAULT_CA_DAYS})",
    )


def _print_table(entries: Sequence[Entry], title: str, console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            # Rich assumes 80 columns when piped (logs, containers); that would split node ids.
            console = Console(width=max(console.width, 140))
    table = Table(title=title)
    table.add_column("credential", no_wrap=True)
    table.add_column("common name", no_wrap=True)
    table.add_column("directory", overflow="fold")
    table.add_column("expires", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for e in entries:
        label = e.role.value if e.name == e.role.value else f"{e.role.value} {e.name}"
        status = "[green]written[/]" if e.written else "kept"
        expires = e.not_after.date().isoformat()
        table.add_row(label, e.common_name, str(e.directory), expires, status)
    console.print(table)

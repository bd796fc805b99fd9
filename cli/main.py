"""The `forsaken` command: one entry point dispatching to subcommands.

This layer sits on top of `forsaken.server` and `forsaken.client` and imports each lazily,
so `forsaken client` never loads server code and vice versa.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from forsaken.common.errors import CertificateError, ForsakenError
from forsaken.common.exitcodes import ExitCode

EXIT_USAGE = ExitCode.USAGE

EXIT_CODES = """\
exit codes:
  0    done; a daemon stopped cleanly (SIGTERM, or the server's STOP for a client)
  1    a tool's request failed or its peer could not be reached; for a daemon an
       unexpected error (a bug, or e.g. a full disk): the log has the traceback
  2    bad configuration or usage (a flag or file, a port in use, a locked state dir)
  3    TLS certificates that cannot work (wrong CA, expired, for another node or name,
       plaintext against TLS): a client exits so after --tls-failure-limit tries
  4    the server refused this node: revoked or quarantined
  130  interrupted (SIGINT, Ctrl-C)
"""

AddArguments = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]

# The daemons read their options through `forsaken.common.config`; {env} is the daemon's prefix.
_DAEMON_OPTIONS = (
    "Options come from flags, a TOML file (--config) and environment variables ({env}_<OPTION>), "
    "flags winning."
)


def _server(args: argparse.Namespace) -> int:
    from forsaken.common.config import resolve
    from forsaken.common.logs import setup_logging
    from forsaken.server.app import ENV_PREFIX, ServerConfig, ServerDaemon

    config = resolve(ServerConfig, args, env_prefix=ENV_PREFIX)
    setup_logging(config.log_level, config.log_format, "server")
    return ServerDaemon(config).run()


def _client(args: argparse.Namespace) -> int:
    from forsaken.client.app import ENV_PREFIX, ClientApp, ClientConfig
    from forsaken.common.config import resolve
    from forsaken.common.logs import setup_logging

    config = resolve(ClientConfig, args, env_prefix=ENV_PREFIX)
    setup_logging(config.log_level, config.log_format, f"client {config.partition}")
    return ClientApp(config).run()


@dataclass(frozen=True, slots=True)
class _Subcommand:
    """One `forsaken <name>`: what its help says and the code that parses and runs it."""

    name: str
    help: str
    description: str
    add_arguments: AddArguments
    run: Handler
    epilog: str = ""


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph texts as usual; keeps texts written with line breaks (the exit
    codes, tables of columns) as they are."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def _subcommands() -> tuple[_Subcommand, ...]:
    """Every subcommand, in the order `forsaken --help` lists them.

    Built when the parser is, not at import, so that importing this module stays cheap.
    """
    # The parser needs only the daemons' config dataclasses; `_server` and `_client` load the
    # daemons themselves when they run. The tools' modules are loaded whole, for their
    # argument builders and their run functions alike.
    from forsaken.cli import admin, certs, demo, forget, status
    from forsaken.client.app import ENV_PREFIX as CLIENT_ENV
    from forsaken.client.app import ClientConfig
    from forsaken.common.config import add_arguments
    from forsaken.lab import bench, evaluate
    from forsaken.server.app import ENV_PREFIX as SERVER_ENV
    from forsaken.server.app import ServerConfig

    return (
        _Subcommand(
            "server",
            "run the aggregation server daemon",
            "Run the aggregation server: rounds over gRPC, checkpoints and a SQLite ledger in "
            "--state-dir. " + _DAEMON_OPTIONS.format(env=SERVER_ENV),
            functools.partial(add_arguments, cls=ServerConfig, env_prefix=SERVER_ENV),
            _server,
            EXIT_CODES,
        ),
        _Subcommand(
            "client",
            "run a client daemon that trains on local data",
            "Run a client daemon: it holds local data, dials out to --server, trains locally "
            "and pushes updates. " + _DAEMON_OPTIONS.format(env=CLIENT_ENV),
            functools.partial(add_arguments, cls=ClientConfig, env_prefix=CLIENT_ENV),
            _client,
            EXIT_CODES,
        ),
        _Subcommand(
            "demo",
            "start a server and N clients as separate processes on loopback",
            "Start one server and N client daemons as separate OS processes talking gRPC on "
            "loopback, show progress, and write report.json and a plot to --out.",
            demo.add_demo_arguments,
            demo.run_demo,
        ),
        _Subcommand(
            "evaluate",
            "run the unlearning evaluation with U from real daemons",
            "Per seed, train a federation of real daemons in which client 0 holds the "
            "scenario's data, make client 0 forget with ForgetMe, and compare the unlearned "
            "model with in-process references (retrain, retrain with another seed, finetune, "
            "pga, fedquit, NoT) under a per-example membership attack (LiRA, calibrated on "
            "shadow federations) and the scenario's probes. Writes evaluation.json, "
            "evaluation.png and a per-seed detail file to --out.",
            evaluate.add_evaluate_arguments,
            evaluate.run_evaluate,
        ),
        _Subcommand(
            "status",
            "show a server's state, rounds, clients and forget requests",
            "Query a server's Admin API and print its status, rounds, clients and forget requests.",
            status.add_status_arguments,
            status.run_status,
        ),
        _Subcommand(
            "certs",
            "create the federation's CA and mutual-TLS certificates",
            "Create a federation CA and the mutual-TLS certificates of its server, clients and "
            "operators, or issue one for an existing client state directory. A client "
            "certificate's common name is the node id derived from that node's Ed25519 key.",
            certs.add_certs_arguments,
            certs.run_certs,
        ),
        _Subcommand(
            "forget",
            "ask a client daemon to make the federation forget its data",
            "A data owner's command: the client daemon stops using the data at once and asks "
            "the federation to unlearn it (all of it, or the ids in --samples). With --wait it "
            "shows progress and prints the receipt of measured evidence.",
            forget.add_forget_arguments,
            forget.run_forget,
        ),
        _Subcommand(
            "admin",
            "operator actions: revoke, release or forget a node",
            "Operator actions that change the server's state, through its Admin API.",
            admin.add_admin_arguments,
            admin.run_admin,
        ),
        _Subcommand(
            "bench",
            "benchmarks that print JSON",
            "Benchmarks. Each prints JSON; figures are ratios to a baseline taken in the same run.",
            bench.add_bench_arguments,
            bench.run_bench,
        ),
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("forsaken")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forsaken",
        description="Federated learning with secure aggregation in which a participant can "
        "take its data back.",
        epilog=EXIT_CODES,
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"forsaken {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _subcommands():
        p = sub.add_parser(
            command.name,
            help=command.help,
            description=command.description,
            epilog=command.epilog or None,
            formatter_class=_HelpFormatter,
        )
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Handler = args.func
    try:
        return int(func(args))
    except CertificateError as exc:
        print(f"forsaken {args.command}: error: {exc}", file=sys.stderr)
        return ExitCode.CERTIFICATE
    except ForsakenError as exc:
        print(f"forsaken {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED

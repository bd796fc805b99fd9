"""The `forsaken` command: one entry point dispatching to subcommands.

This layer sits on top of `forsaken.server` and `forsaken.client` and imports each lazily,
so `forsaken client` never loads server code and vice versa.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from forsaken.common.errors import ForsakenError

EXIT_USAGE = 2


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


def _demo(args: argparse.Namespace) -> int:
    from forsaken.demo import run_demo

    return run_demo(args)


def _evaluate(args: argparse.Namespace) -> int:
    from forsaken.evaluate import run_evaluate

    return run_evaluate(args)


def _status(args: argparse.Namespace) -> int:
    from forsaken.status import run_status

    return run_status(args)


def _bench(args: argparse.Namespace) -> int:
    from forsaken.bench import run_bench

    return run_bench(args)


def build_parser() -> argparse.ArgumentParser:
    from forsaken.client.app import ENV_PREFIX as CLIENT_ENV
    from forsaken.client.app import ClientConfig
    from forsaken.common.config import add_arguments
    from forsaken.server.app import ENV_PREFIX as SERVER_ENV
    from forsaken.server.app import ServerConfig

    parser = argparse.ArgumentParser(
        prog="forsaken",
        description="Federated learning with secure aggregation in which a participant can "
        "take its data back.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "server",
        help="run the aggregation server daemon",
        description="Run the aggregation server: rounds over gRPC, checkpoints and a SQLite "
        "ledger in --state-dir. Options come from flags, a TOML file (--config) and "
        f"environment variables ({SERVER_ENV}_<OPTION>), flags winning.",
    )
    add_arguments(p, ServerConfig, SERVER_ENV)
    p.set_defaults(func=_server)

    p = sub.add_parser(
        "client",
        help="run a client daemon that trains on local data",
        description="Run a client daemon: it holds local data, dials out to --server, trains "
        "locally and pushes updates. Options come from flags, a TOML file (--config) and "
        f"environment variables ({CLIENT_ENV}_<OPTION>), flags winning.",
    )
    add_arguments(p, ClientConfig, CLIENT_ENV)
    p.set_defaults(func=_client)

    from forsaken.demo import add_demo_arguments

    p = sub.add_parser(
        "demo",
        help="start a server and N clients as separate processes on loopback",
        description="Start one server and N client daemons as separate OS processes talking "
        "gRPC on loopback, show progress, and write report.json and a plot to --out.",
    )
    add_demo_arguments(p)
    p.set_defaults(func=_demo)

    from forsaken.evaluate import add_evaluate_arguments

    p = sub.add_parser(
        "evaluate",
        help="run the unlearning evaluation of DESIGN §5 with U from real daemons",
        description="Per seed, train a federation of real daemons with a backdoor in client 0, "
        "make client 0 forget its data with ForgetMe, and compare the unlearned model with "
        "in-process references (retrain, retrain with another seed, finetune, pga). Writes "
        "evaluation.json, evaluation.png and a per-seed detail file to --out.",
    )
    add_evaluate_arguments(p)
    p.set_defaults(func=_evaluate)

    from forsaken.status import add_status_arguments

    p = sub.add_parser(
        "status",
        help="show a server's state, rounds, clients and forget requests",
        description="Query a server's Admin API and print its status, rounds, clients and "
        "forget requests.",
    )
    add_status_arguments(p)
    p.set_defaults(func=_status)

    from forsaken.certs import add_certs_arguments, run_certs

    p = sub.add_parser(
        "certs",
        help="create the federation's CA and mutual-TLS certificates",
        description="Create a federation CA and the mutual-TLS certificates of its server, "
        "clients and operators, or issue one for an existing client state directory. A client "
        "certificate's common name is the node id derived from that node's Ed25519 key.",
    )
    add_certs_arguments(p)
    p.set_defaults(func=run_certs)

    from forsaken.forget import add_forget_arguments, run_forget

    p = sub.add_parser(
        "forget",
        help="ask a client daemon to make the federation forget its data",
        description="A data owner's command: the client daemon stops using the data at once "
        "and asks the federation to unlearn it (all of it, or the ids in --samples). With "
        "--wait it shows progress and prints the receipt of measured evidence.",
    )
    add_forget_arguments(p)
    p.set_defaults(func=run_forget)

    from forsaken.admin import add_admin_arguments, run_admin

    p = sub.add_parser(
        "admin",
        help="operator actions (revoke a node)",
        description="Operator actions that change the server's state, through its Admin API.",
    )
    add_admin_arguments(p)
    p.set_defaults(func=run_admin)

    from forsaken.bench import add_bench_arguments

    p = sub.add_parser(
        "bench",
        help="benchmarks that print JSON",
        description="Benchmarks. Each prints JSON; figures are ratios to a baseline taken in "
        "the same run.",
    )
    add_bench_arguments(p)
    p.set_defaults(func=_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ForsakenError as exc:
        print(f"forsaken {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130

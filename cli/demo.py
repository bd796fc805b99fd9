"""`forsaken demo`: one server and N clients as separate OS processes on loopback.

Shows progress per round, prints a table of per-round accuracy, and writes report.json and
accuracy.png to --out. Every child is torn down on exit, on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from forsaken.common.certs import init_federation
from forsaken.common.tls import channel_credentials
from forsaken.procs import forsaken_command, free_port, spawn, terminate, wait_healthy
from forsaken.status import fetch_status


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="mnist5k",
        help="digits, mnist5k or an .npz path (default: %(default)s)",
    )
    p.add_argument(
        "--clients", type=int, default=5, help="number of client processes (default: %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=10, help="training rounds (default: %(default)s)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("demo-out"),
        help="output directory, replaced if it exists (default: %(default)s)",
    )
    p.add_argument(
        "--scheme",
        choices=("iid", "dirichlet"),
        default="iid",
        help="partition scheme (default: %(default)s)",
    )
    p.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet alpha (default: %(default)s)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for model, partitions and training (default: %(default)s)",
    )
    p.add_argument("--architecture", default="", help="mlp or cnn (default: the dataset's default)")
    p.add_argument(
        "--local-epochs",
        type=int,
        default=None,
        help="local epochs per round (default: the server's default)",
    )
    p.add_argument(
        "--round-timeout",
        type=float,
        default=60.0,
        help="round deadline in seconds (default: %(default)s)",
    )
    p.add_argument(
        "--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free port)"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="give up after this many seconds (default: %(default)s)",
    )


def run_demo(args: argparse.Namespace) -> int:
    console = Console()
    if args.clients < 1:
        console.print("[red]--clients must be >= 1[/red]")
        return 2
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    port = args.port or free_port()
    address = f"127.0.0.1:{port}"
    pki = init_federation(out / "pki", ["localhost"], args.clients, operators=("admin",))
    server_tls = pki.server_dir
    server_args = [
        "server",
        "--tls-cert",
        str(server_tls / "cert.pem"),
        "--tls-key",
        str(server_tls / "key.pem"),
        "--tls-ca",
        str(pki.ca_cert),
        "--listen",
        address,
        "--state-dir",
        str(out / "server"),
        "--dataset",
        args.dataset,
        "--rounds",
        str(args.rounds),
        "--min-clients",
        str(args.clients),
        "--min-completed",
        str(max(1, (args.clients + 1) // 2)),
        "--round-timeout-s",
        str(args.round_timeout),
        "--seed",
        str(args.seed),
        "--poll-timeout-s",
        "5",
    ]
    if args.architecture:
        server_args += ["--architecture", args.architecture]
    if args.local_epochs:
        server_args += ["--local-epochs", str(args.local_epochs)]
    procs: list[subprocess.Popen[bytes]] = []
    started = time.monotonic()
    try:
        server = spawn(forsaken_command(*server_args), out / "logs" / "server.log")
        procs.append(server)
        operator = pki.operator_dir("admin")
        wait_healthy(address, timeout_s=120, proc=server, credentials=channel_credentials(operator))
        for i in range(args.clients):
            state = out / f"client-{i}"
            shutil.copytree(pki.client_dir(i), state)  # node key and its certificate
            client_args = [
                "client",
                "--tls-cert",
                str(state / "cert.pem"),
                "--tls-key",
                str(state / "key.pem"),
                "--tls-ca",
                str(state / "ca.pem"),
                "--server",
                address,
                "--state-dir",
                str(state),
                "--dataset",
                args.dataset,
                "--partition",
                f"{i}/{args.clients}",
                "--scheme",
                args.scheme,
                "--alpha",
                str(args.alpha),
                "--seed",
                str(args.seed),
                "--owner-listen",
                "127.0.0.1:0",
                "--max-backoff-s",
                "5",
            ]
            procs.append(spawn(forsaken_command(*client_args), out / "logs" / f"client-{i}.log"))
        console.print(
            f"server on {address}, {args.clients} clients, dataset {args.dataset}; "
            f"logs in {out / 'logs'}"
        )
        status = _follow(address, args, procs, console, started, operator)
        _wait_clients_exit(procs[1:], timeout_s=30)
        report = _report(status, args, time.monotonic() - started)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        _plot(report, out / "accuracy.png")
        _table(report, console)
        console.print(f"report: {out / 'report.json'}, plot: {out / 'accuracy.png'}")
        return 0 if status["completed_rounds"] >= args.rounds else 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping all processes[/yellow]")
        return 130
    finally:
        terminate(procs)


def _follow(
    address: str,
    args: argparse.Namespace,
    procs: list[subprocess.Popen[bytes]],
    console: Console,
    started: float,
    operator: Path,
) -> dict[str, Any]:
    shown = 0
    status: dict[str, Any] = {}
    with Progress(
        TextColumn("[bold]rounds"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        bar = progress.add_task("waiting for clients", total=args.rounds)
        while True:
            if time.monotonic() - started > args.timeout:
                raise TimeoutError(f"demo did not finish within {args.timeout:.0f}s")
            if procs[0].poll() is not None and procs[0].returncode != 0:
                raise RuntimeError(f"server exited with code {procs[0].returncode}; see its log")
            try:
                status = fetch_status(address, 0, timeout=5, tls_dir=operator)
            except grpc.RpcError:
                time.sleep(0.5)
                continue
            completed = [
                r for r in status["rounds"] if r["status"] == "completed" and r["round"] > 0
            ]
            for r in completed[shown:]:
                acc = r["test_acc"]
                progress.console.print(
                    f"round {r['round']:3d}: acc {acc:.4f}  participants {len(r['participants'])}"
                    f"  {r['duration_s']:.2f}s"
                )
            shown = len(completed)
            progress.update(
                bar,
                completed=shown,
                description=f"{status['connected_clients']} clients, {status['phase']}",
            )
            if status["phase"] == "finished":
                break
            time.sleep(0.5)
    return status


def _wait_clients_exit(clients: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    """Clients exit on their own once they poll the server's STOP; give them a moment."""
    deadline = time.monotonic() + timeout_s
    for p in clients:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))


def _report(status: dict[str, Any], args: argparse.Namespace, wall_s: float) -> dict[str, Any]:
    rounds = [
        {
            "round": r["round"],
            "test_acc": r["test_acc"],
            "participants": len(r["participants"]),
            "duration_s": round(r["duration_s"], 4),
        }
        for r in status["rounds"]
        if r["status"] == "completed" and r["round"] > 0
    ]
    aborted = [r for r in status["rounds"] if r["status"] == "aborted"]
    return {
        "dataset": args.dataset,
        "clients": args.clients,
        "rounds": rounds,
        "aborted_attempts": [{"round": r["round"], "reason": r["reason"]} for r in aborted],
        "final": {"test_acc": rounds[-1]["test_acc"] if rounds else None},
        "secure_aggregation": status.get("secure_aggregation", False),
        "model_sha256": status.get("model_sha256"),
        "wall_s": round(wall_s, 2),
    }


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["round"] for r in report["rounds"]]
    ys = [r["test_acc"] for r in report["rounds"]]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, marker="o")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"forsaken demo: {report['dataset']}, {report['clients']} clients")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _table(report: dict[str, Any], console: Console) -> None:
    table = Table(title="per-round test accuracy")
    for col in ("round", "test_acc", "participants", "duration_s"):
        table.add_column(col, justify="right")
    for r in report["rounds"]:
        table.add_row(
            str(r["round"]),
            f"{r['test_acc']:.4f}",
            str(r["participants"]),
            f"{r['duration_s']:.2f}",
        )
    console.print(table)
    final = report["final"]["test_acc"]
    console.print(f"[bold]final test accuracy: {final:.4f}[/bold]  (wall {report['wall_s']:.1f}s)")

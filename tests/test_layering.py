"""Dependency direction: common imports neither server nor client; those never import each
other; only edge modules import grpc; the server core needs neither torch nor protos."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Modules allowed to import grpc (the RPC edges and process launchers).
GRPC_EDGES = {
    "common/rpc_errors.py",
    "common/tls.py",
    "server/rpc.py",
    "server/app.py",
    "client/transport.py",
    "client/owner.py",
    "client/app.py",
}
# The server core: no grpc, no torch, no generated code.
SERVER_CORE = {
    "server/coordinator.py",
    "server/rounds.py",
    "server/forgetting.py",
    "server/limits.py",
    "server/policy.py",
    "server/runtime.py",
    "server/sessions.py",
    "server/ledger.py",
    "server/secure_round.py",
    "server/checkpoints.py",
    "server/selection.py",
    "server/submissions.py",
    "server/round_close.py",
    "server/forget_rounds.py",
    "server/forget_lifecycle.py",
    "server/forget_state.py",
    "server/forget_strategies.py",
    "server/forget_receipts.py",
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def rel(p: Path) -> str:
    return p.relative_to(ROOT).as_posix()


def test_common_imports_neither_server_nor_client() -> None:
    for path in files("common"):
        bad = {n for n in imports_of(path) if n.startswith(("forsaken.server", "forsaken.client"))}
        assert not bad, f"{rel(path)} imports {bad}"


def test_server_and_client_do_not_import_each_other() -> None:
    for path in files("server"):
        bad = {n for n in imports_of(path) if n.startswith("forsaken.client")}
        assert not bad, f"{rel(path)} imports {bad}"
    for path in files("client"):
        bad = {n for n in imports_of(path) if n.startswith("forsaken.server")}
        assert not bad, f"{rel(path)} imports {bad}"


def test_only_edges_import_grpc() -> None:
    for folder in ("common", "server", "client"):
        for path in files(folder):
            uses = any(
                n == "grpc" or n.startswith("grpc.") or n.startswith("grpc_")
                for n in imports_of(path)
            )
            if uses:
                assert rel(path) in GRPC_EDGES, f"{rel(path)} imports grpc but is not an RPC edge"


def test_server_core_needs_no_torch_or_protos() -> None:
    for name in SERVER_CORE:
        path = ROOT / name
        if not path.exists():
            continue
        bad = {n for n in imports_of(path) if n.startswith(("torch", "forsaken.v1", "grpc"))}
        assert not bad, f"{name} imports {bad}"


def test_wheel_installs_only_the_forsaken_namespace(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("forsaken-*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert all(t == "forsaken" or t.startswith("forsaken-") for t in tops), tops
    names = zipfile.ZipFile(wheel).namelist()
    for module in (
        "forsaken/server/coordinator.py",
        "forsaken/client/daemon.py",
        "forsaken/common/tensors.py",
        "forsaken/v1/fleet_pb2.py",
        "forsaken/main.py",
    ):
        assert module in names, module
    # Every package folder is listed in pyproject, so none is silently left out of the wheel.
    for folder, prefix in (
        ("common", "forsaken/common"),
        ("server", "forsaken/server"),
        ("client", "forsaken/client"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            sub = init.parent.relative_to(ROOT / folder).as_posix()
            want = f"{prefix}/{sub}/__init__.py" if sub != "." else f"{prefix}/__init__.py"
            assert want in names, f"{want} missing from the wheel: list it in pyproject.toml"

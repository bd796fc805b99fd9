"""Dependency direction: the library (forsaken/, common, server, client, protos) never imports
the command line (cli/) or the evaluation and benchmark tooling (lab/); common imports neither
server nor client; those never import each other; only edge modules import grpc; the server core
needs neither torch nor protos; and no forsaken modules import each other in a loop."""

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


# Each import name's folder: forsaken.cli.forget is cli/forget.py, forsaken.lab.x is lab/x.py.
PACKAGES = {
    "forsaken": "forsaken",
    "forsaken.cli": "cli",
    "forsaken.lab": "lab",
    "forsaken.common": "common",
    "forsaken.server": "server",
    "forsaken.client": "client",
    "forsaken.v1": "protos/forsaken/v1",
}
LIBRARY = ("forsaken", "common", "server", "client", "protos/forsaken/v1")
# `python -m forsaken` is the command line's entry point; nothing imports it.
ENTRY_POINTS = {"forsaken/__main__.py"}


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
        "forsaken/__init__.py",
        "forsaken/launch.py",
        "forsaken/cli/main.py",
        "forsaken/lab/evaluate.py",
    ):
        assert module in names, module
    # Every package folder is listed in pyproject, so none is silently left out of the wheel.
    for folder, prefix in (
        ("forsaken", "forsaken"),
        ("cli", "forsaken/cli"),
        ("lab", "forsaken/lab"),
        ("common", "forsaken/common"),
        ("server", "forsaken/server"),
        ("client", "forsaken/client"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            if "flower_app" in init.parts:  # its own project (see modules())
                continue
            sub = init.parent.relative_to(ROOT / folder).as_posix()
            want = f"{prefix}/{sub}/__init__.py" if sub != "." else f"{prefix}/__init__.py"
            assert want in names, f"{want} missing from the wheel: list it in pyproject.toml"


def modules() -> dict[str, Path]:
    """Every forsaken module by its import name (the Flower app of lab/compare/ is its own
    project, installed only in the comparison's virtualenv)."""
    found: dict[str, Path] = {}
    for package, folder in PACKAGES.items():
        for path in files(folder):
            if "flower_app" in path.parts:
                continue
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def module_imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The forsaken modules `path` imports, at the top or inside a function alike (a lazy
    import is still a dependency): `from forsaken.cli import forget` names forsaken.cli.forget."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if name in known:
                    out.add(name)
                elif node.module in known:
                    out.add(node.module)
    return out


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: module_imports(path, known) - {name} for name, path in known.items()}


def test_every_import_name_leads_to_its_file() -> None:
    known = modules()
    assert known["forsaken"] == ROOT / "forsaken/__init__.py"
    assert known["forsaken.cli.forget"] == ROOT / "cli/forget.py"
    assert known["forsaken.lab.evaluate"] == ROOT / "lab/evaluate.py"
    assert known["forsaken.launch"] == ROOT / "forsaken/launch.py"
    import importlib.util

    for name in ("forsaken", "forsaken.cli.main", "forsaken.lab.reference", "forsaken.launch"):
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, name
        assert Path(spec.origin).resolve() == known[name].resolve(), name


def test_library_imports_neither_the_command_line_nor_the_lab() -> None:
    for folder in LIBRARY:
        for path in files(folder):
            if rel(path) in ENTRY_POINTS:
                continue
            bad = {
                n
                for n in imports_of(path)
                if n in ("forsaken.cli", "forsaken.lab")
                or n.startswith(("forsaken.cli.", "forsaken.lab."))
            }
            assert not bad, f"{rel(path)} imports {bad}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop of `graph`, as the path that closes it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_import_cycles_among_forsaken_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_loop() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None

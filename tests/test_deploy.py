"""The deployment files: the compose file validates, every command it runs exists in the
CLI, the certificates it makes land where the daemons look for them, and the image's health
check works against a real mTLS server."""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import itertools
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from forsaken.cli.certs import add_certs_arguments, run_certs
from forsaken.common import certs, tls
from forsaken.common.identity import KEY_FILE, NodeIdentity

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CLIENTS = ("client-0", "client-1", "client-2")

# What the compose file uses that the lead wires in after this change (TLS and metrics flags
# on the daemons, `certs` in cli/main.py). Missing only these is an expected failure; any
# other unknown flag or subcommand is a real one.
PENDING = {
    "--tls-cert",
    "--tls-key",
    "--tls-ca",
    "--tls-server-name",
    "--metrics-listen",
    "--insecure",
    "subcommand certs",
}


# --- docker-compose and YAML -----------------------------------------------------------------


def _install_docker_compose() -> str:
    """Install Debian's docker-compose when running as root; '' on success, else why not."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "docker-compose is not installed and this is not root with apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "docker-compose"]
    for argv in (install, ["apt-get", "update", "-q"], install):
        try:
            proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            return f"{' '.join(argv)} timed out"
        if argv is install and proc.returncode == 0 and shutil.which("docker-compose"):
            return ""
    return f"apt-get could not install docker-compose: {proc.stderr.strip()[-300:]}"


@pytest.fixture(scope="module")
def compose_bin() -> str:
    if shutil.which("docker-compose") is None:
        reason = _install_docker_compose()
        if reason:
            pytest.skip(reason)
    path = shutil.which("docker-compose")
    assert path is not None
    return path


def _yaml_to_data(text: str, compose_bin: str) -> Any:
    """Parse YAML with PyYAML: ours if installed, else the interpreter docker-compose runs on
    (Debian's docker-compose is a Python program that depends on python3-yaml)."""
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:
        return yaml.safe_load(text)
    shebang = Path(compose_bin).read_bytes()[:200].split(b"\n", 1)[0].decode(errors="replace")
    interpreter = shlex.split(shebang[2:]) if shebang.startswith("#!") else []
    if not interpreter or "python" not in interpreter[-1]:
        pytest.skip(f"no YAML parser: PyYAML is missing and {compose_bin} is not a Python script")
    code = "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)"
    proc = subprocess.run([*interpreter, "-c", code], input=text, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"no YAML parser: {proc.stderr.strip()[-200:]}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def config(compose_bin: str) -> dict[str, Any]:
    """The compose file as docker-compose itself normalizes it (validation included)."""
    proc = subprocess.run(
        [compose_bin, "-f", str(COMPOSE), "config"],
        cwd=COMPOSE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"docker-compose config failed:\n{proc.stderr}"
    data = _yaml_to_data(proc.stdout, compose_bin)
    assert isinstance(data, dict)
    return data


def service_argv(svc: dict[str, Any]) -> list[str]:
    def words(value: Any) -> list[str]:
        if value is None:
            return []
        return shlex.split(value) if isinstance(value, str) else [str(w) for w in value]

    entrypoint = words(svc.get("entrypoint")) or dockerfile_entrypoint()
    return [*entrypoint, *words(svc.get("command"))]


def mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Mount target -> named volume."""
    out = {}
    for entry in svc.get("volumes", []):
        if isinstance(entry, dict):
            out[entry["target"]] = entry["source"]
        else:
            source, target = entry.split(":")[:2]
            out[target] = source
    return out


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# --- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())  # join continuation lines
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_entrypoint() -> list[str]:
    (value,) = [rest for kw, rest in dockerfile_instructions() if kw == "ENTRYPOINT"]
    return json.loads(value)


def dockerfile_healthcheck() -> list[str]:
    (value,) = [rest for kw, rest in dockerfile_instructions() if kw == "HEALTHCHECK"]
    return json.loads(value[value.index("CMD ") + 4 :])


def stage_of(ins: list[tuple[str, str]], name: str) -> list[tuple[str, str]]:
    """The instructions of one build stage, from its FROM to the next."""
    starts = [i for i, (kw, _) in enumerate(ins) if kw == "FROM"]
    for i, j in itertools.pairwise([*starts, len(ins)]):
        if ins[i][1].split()[-1] == name:
            return ins[i:j]
    raise AssertionError(f"no stage {name}")


def test_dockerfile_shape() -> None:
    ins = dockerfile_instructions()
    stages = [rest.split() for kw, rest in ins if kw == "FROM"]
    # A build argument chooses the base image, a registry's python image by default.
    assert stages[0] == ["${BASE_IMAGE}", "AS", "base"]
    (default,) = [rest for kw, rest in ins if kw == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert default == "BASE_IMAGE=python:3.11-slim-bookworm"
    assert [s[0] for s in stages[1:]] == ["base", "base"]
    runtime = stage_of(ins, "runtime")
    assert runtime == ins[[i for i, (kw, _) in enumerate(ins) if kw == "FROM"][-1] :]
    copies = [rest for kw, rest in runtime if kw == "COPY"]
    # The runtime stage takes only the venv from the build stage: no pip install, no tools.
    assert copies == ["--from=builder /opt/forsaken /opt/forsaken"]
    assert not [rest for kw, rest in runtime if kw == "RUN" and "pip" in rest]
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert dockerfile_entrypoint() == ["forsaken"]
    builder = " ".join(rest for _, rest in stage_of(ins, "builder"))
    assert "install-torch.sh" in builder and "ARG TORCH_VARIANT=cpu" in DOCKERFILE.read_text()
    assert "pip uninstall" in builder and "image_smoke.py" in builder
    # Everything the stages copy exists in the repository and is in the build context.
    ignore = (ROOT / ".dockerignore").read_text().split()
    for kw, rest in ins:
        if kw == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
                top = source.rstrip("/")
                assert f"!{top}" in ignore or f"!{top.split('/')[0]}" in ignore, source


def test_torch_installer_prefers_cpu_and_local_wheels(tmp_path: Path) -> None:
    """deploy/install-torch.sh: CPU build from the PyTorch CPU index by default, a local wheel
    first (no index asked), and a variable for a CUDA build. Exercised with a stub `python`
    that records the pip commands it gets."""
    script = ROOT / "deploy" / "install-torch.sh"
    log = tmp_path / "calls"
    stub = tmp_path / "python"
    stub.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        # `import importlib.metadata`: no torch yet. pip --no-index: no local wheel.
        'case "$*" in *--no-index*) exit 1 ;; -c*) exit 1 ;; esac\n'
        "exit 0\n"
    )
    stub.chmod(0o755)

    def calls(**env: str) -> list[str]:
        log.write_text("")
        proc = subprocess.run(
            ["sh", str(script), str(stub)],
            env={"PATH": os.environ["PATH"], **env},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        return [c for c in log.read_text().splitlines() if c.startswith("-m pip")]

    default = calls()
    assert default[0] == "-m pip install -q --no-index --no-deps torch==2.13.0+cpu"
    assert default[1] == (
        "-m pip install -q --no-deps --index-url https://download.pytorch.org/whl/cpu "
        "torch==2.13.0+cpu"
    )
    cuda = calls(TORCH_VARIANT="cu128")
    assert cuda[-1].endswith(
        "--index-url https://download.pytorch.org/whl/cu128 torch==2.13.0+cu128"
    )
    assert calls(TORCH_VARIANT="pypi") == ["-m pip install -q torch==2.13.0"]


# --- the tests against the compose file --------------------------------------------------------


def test_compose_file_is_valid_and_wired(config: dict[str, Any]) -> None:
    services = config["services"]
    assert set(services) == {"certs", "server", "operator", *CLIENTS}
    # The operator's tools start only on `run`, and read the PKI without writing it.
    assert services["operator"]["profiles"] == ["tools"]
    assert mounts(services["operator"]) == {"/pki": "pki"}
    server = services["server"]
    assert server["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    assert server["healthcheck"]["test"][0] == "CMD"
    state_volumes = set()
    for i, name in enumerate(CLIENTS):
        svc = services[name]
        argv = service_argv(svc)
        assert svc["depends_on"]["server"]["condition"] == "service_healthy"
        assert (flag(argv, "--dataset"), flag(argv, "--partition")) == ("mnist5k", f"{i}/3")
        state = mounts(svc)[flag(argv, "--state-dir")]
        assert state in config["volumes"]
        state_volumes.add(state)
    assert len(state_volumes) == len(CLIENTS), "each client needs its own state volume"
    assert mounts(server)[flag(service_argv(server), "--state-dir")] not in state_volumes


@functools.cache
def cli_help(words: tuple[str, ...]) -> str | None:
    proc = subprocess.run(
        [sys.executable, "-m", "forsaken", *words, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    return proc.stdout if proc.returncode == 0 else None


def certs_module_help(words: tuple[str, ...]) -> str:
    """`forsaken certs ... --help` from the module itself, for before it is wired in."""
    parser = argparse.ArgumentParser(prog="forsaken certs")
    add_certs_arguments(parser)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parser.parse_args([*words, "--help"])
    return out.getvalue()


def test_every_compose_command_exists_in_the_cli(config: dict[str, Any]) -> None:
    problems: list[tuple[str, str]] = []  # (what is missing, where)
    for name, svc in config["services"].items():
        argv = service_argv(svc)
        assert argv[0] == "forsaken", f"{name} runs {argv[0]!r}, not the forsaken CLI"
        words = tuple(w for w in _leading_words(argv[1:]))
        text = cli_help(words)
        if text is None and words[0] == "certs":
            problems.append(("subcommand certs", name))
            text = certs_module_help(words[1:])
        assert text is not None, f"{name}: `forsaken {' '.join(words)}` is not a command"
        for token in argv[1:]:
            if token.startswith("--"):
                option = token.split("=", 1)[0]
                if not re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text):
                    problems.append((option, name))
    real = [p for p in problems if p[0] not in PENDING]
    assert not real, f"the compose file uses options the CLI lacks: {real}"
    if problems:
        pytest.xfail(f"waiting for the lead to wire {sorted({p[0] for p in problems})}")


def _leading_words(args: list[str]) -> Iterator[str]:
    for a in args:
        if a.startswith("-"):
            return
        yield a


def test_compose_certificates_land_where_the_daemons_look(
    config: dict[str, Any], tmp_path: Path
) -> None:
    services = config["services"]
    argv = service_argv(services["certs"])[1:]
    out_dir = flag(argv, "--out")
    argv[argv.index(out_dir)] = str(tmp_path)
    parser = argparse.ArgumentParser()
    add_certs_arguments(parser)
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_certs(parser.parse_args(argv[1:])) == 0
    # Where each named volume's contents ended up, as the certs container saw them.
    volume_dirs = {
        volume: tmp_path / posixpath.relpath(target, out_dir)
        for target, volume in mounts(services["certs"]).items()
    }

    def host_path(svc: dict[str, Any], path: str) -> Path:
        target = max((t for t in mounts(svc) if path == t or path.startswith(t + "/")), key=len)
        return volume_dirs[mounts(svc)[target]] / posixpath.relpath(path, target)

    node_ids = set()
    for name in ("server", *CLIENTS):
        svc = services[name]
        cmd = service_argv(svc)
        files = {f: host_path(svc, flag(cmd, f)) for f in ("--tls-cert", "--tls-key", "--tls-ca")}
        assert all(p.is_file() for p in files.values()), (name, files)
        tls.TlsFiles(files["--tls-cert"], files["--tls-key"], files["--tls-ca"]).load()
        for volume in {mounts(svc)[t] for t in mounts(svc)} & set(volume_dirs):
            assert not list(volume_dirs[volume].rglob("ca.key")), f"{name} can read the CA key"
        cert = x509.load_pem_x509_certificate(files["--tls-cert"].read_bytes())
        if name == "server":
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            server_names = set(sans.get_values_for_type(x509.DNSName))
            continue
        # The daemon loads its identity from --state-dir: the cert must name that node.
        state = host_path(svc, flag(cmd, "--state-dir"))
        assert (state / KEY_FILE).is_file()
        node_id = NodeIdentity.load_or_create(state).node_id
        assert certs.common_name_of(cert) == node_id
        assert flag(cmd, "--server").rsplit(":", 1)[0] in server_names
        node_ids.add(node_id)
    assert len(node_ids) == len(CLIENTS)
    # The image pre-creates every mount point `certs` writes through (see the Dockerfile).
    match = re.search(r"ARG DEMO_CLIENTS=(\d+)", DOCKERFILE.read_text())
    assert match and int(match.group(1)) == len(CLIENTS)


@contextlib.contextmanager
def health_server(creds: grpc.ServerCredentials) -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(0).wait()


def test_healthcheck_is_shared_and_works_over_mtls(config: dict[str, Any], tmp_path: Path) -> None:
    probe = dockerfile_healthcheck()
    assert config["services"]["server"]["healthcheck"]["test"] == ["CMD", *probe]
    assert probe == ["python", "-m", "forsaken.health"]
    tls_dir = config["services"]["server"]["environment"]["FORSAKEN_HEALTH_TLS_DIR"]
    assert tls_dir in mounts(config["services"]["server"])
    fed = certs.init_federation(tmp_path, ["server"], clients=0)

    def run_probe(port: int, with_tls: bool) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FORSAKEN_HEALTH_TARGET": f"127.0.0.1:{port}"}
        env.pop("FORSAKEN_HEALTH_TLS_DIR", None)
        if with_tls:
            env["FORSAKEN_HEALTH_TLS_DIR"] = str(fed.server_dir)
        return subprocess.run(
            [sys.executable, *probe[1:]], env=env, capture_output=True, text=True, timeout=60,
            cwd=tmp_path,
        )  # fmt: skip

    with health_server(tls.server_credentials(fed.server_dir)) as (port, servicer):
        ok = run_probe(port, with_tls=True)
        assert ok.returncode == 0, ok.stderr
        plaintext = run_probe(port, with_tls=False)
        servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        not_serving = run_probe(port, with_tls=True)
    for failed in (plaintext, not_serving):
        assert failed.returncode == 1
        assert "Traceback" not in failed.stderr, failed.stderr


def test_client_probe_checks_the_owner_api(config: dict[str, Any], tmp_path: Path) -> None:
    """The clients' health check asks a real client daemon's Owner API; a daemon that retries
    an unreachable server is healthy (restarting it would not help), a stopped one is not."""
    test = config["services"]["client-0"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "python", "-m", "forsaken.health"]
    assert test[test.index("--owner") + 1] == flag(service_argv(config["services"]["client-0"]),
                                                   "--state-dir")  # fmt: skip
    from forsaken.launch import free_port

    state = tmp_path / "client"
    probe = [sys.executable, "-m", "forsaken.health", "--owner", str(state)]
    missing = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "has not started" in missing.stderr
    daemon = subprocess.Popen(
        [sys.executable, "-m", "forsaken", "client", "--server", f"127.0.0.1:{free_port()}",
         "--state-dir", str(state), "--dataset", "digits", "--owner-listen", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            ok = subprocess.run(probe, capture_output=True, text=True, timeout=60)
            if ok.returncode == 0 or time.monotonic() > deadline or daemon.poll() is not None:
                break
            time.sleep(0.5)
        assert ok.returncode == 0, (ok.stderr, daemon.poll())
        assert "retrying" in ok.stdout
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
    gone = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    assert gone.returncode == 1 and "Owner API" in gone.stderr
    assert "Traceback" not in gone.stderr


def test_restart_policy_lets_a_finished_federation_end(config: dict[str, Any]) -> None:
    """A client exits 0 once the federation has finished: it must stay down then (a client
    that `unless-stopped` brought back rejoined and exited again, 33 times in 28 minutes),
    and come back, a bounded number of times, only when it failed."""
    services = config["services"]
    for name in CLIENTS:
        assert services[name]["restart"].startswith("on-failure:"), services[name]["restart"]
        assert 0 < int(services[name]["restart"].split(":")[1]) <= 5
    assert services["server"]["restart"] == "unless-stopped"
    assert services["certs"]["restart"] == "no"
    for name in ("server", *CLIENTS):
        assert services[name]["read_only"] is True

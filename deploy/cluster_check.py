"""`make test-deploy`: the deployment, checked end to end on this machine.

Starts a Docker engine if none runs (as root, installing Debian's docker.io if needed), makes
a Debian base image with debootstrap when no Python base image can be had, builds the image
from deploy/Dockerfile, runs the compose cluster of deploy/docker-compose.yml until rounds
complete, files a ForgetMe through a client container's Owner API (`forsaken forget --wait`
inside client-0) and waits for its receipt, checks `forsaken status` and /metrics, waits for
the federation to finish and checks that no client restarts after it, and ends with
`down -v`. Every step is logged with its elapsed time.

Where no Docker engine can be started it says so loudly and exits 0 (or 1 with
--require-engine): a skip, never a silent pass. Any other problem fails with the step, the
reason and the containers' logs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
WHEELS = ROOT / "deploy" / "wheels"
CA_DIR = ROOT / "deploy" / "ca-certificates"
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")

PYTHON_IMAGE = "python:3.11-slim-bookworm"
DEBIAN_IMAGE = "debian:bookworm-local"
TORCH = "torch==2.13.0+cpu"
CLIENTS = ("client-0", "client-1", "client-2")
FORGETTER = "client-0"
# Every family the server exports (tests/test_prometheus.py keeps the same list).
METRIC_FAMILIES = (
    "forsaken_rounds_total",
    "forsaken_round_duration_seconds",
    "forsaken_clients_connected",
    "forsaken_bytes_received_total",
    "forsaken_bytes_sent_total",
    "forsaken_round_aborts_total",
    "forsaken_forget_requests",
    "forsaken_secagg_aborts_total",
)


class Skip(Exception):
    """No Docker engine can run here; nothing was tested."""


class Failed(Exception):
    """A step did not do what it should."""


# --- logging ------------------------------------------------------------------------------------


@dataclass
class Log:
    started: float = field(default_factory=time.monotonic)
    steps: list[tuple[str, float, str]] = field(default_factory=list)
    file: Any = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        line = f"[{self.elapsed():7.1f}s] {text}"
        print(line, flush=True)
        if self.file is not None:
            self.file.write(line + "\n")
            self.file.flush()

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        number = len(self.steps) + 1
        self.say(f"step {number}: {name} ...")
        t0 = time.monotonic()
        try:
            yield
        except BaseException as exc:
            took = time.monotonic() - t0
            outcome = "skipped" if isinstance(exc, Skip) else "FAILED"
            self.steps.append((name, took, outcome))
            self.say(f"step {number}: {name}: {outcome} after {took:.1f}s")
            raise
        took = time.monotonic() - t0
        self.steps.append((name, took, "ok"))
        self.say(f"step {number}: {name}: ok in {took:.1f}s")

    def summary(self) -> None:
        self.say("summary:")
        for i, (name, took, outcome) in enumerate(self.steps, 1):
            self.say(f"  {i:2d}. {name:<62} {outcome:>7} {took:7.1f}s")
        self.say(f"  total {self.elapsed():.1f}s")


def banner(lines: Sequence[str]) -> str:
    width = max(72, *(len(line) + 4 for line in lines))
    rule = "#" * width
    return "\n".join([rule, *(f"# {line}" for line in lines), rule])


# --- running commands ---------------------------------------------------------------------------


def run(
    argv: Sequence[str],
    timeout: float,
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    output: Path | None = None,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command; with `output`, its stdout and stderr go to that file instead."""
    try:
        if output is None:
            proc = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=timeout, env=env, input=input
            )
        else:
            with output.open("a") as out:
                proc = subprocess.run(
                    list(argv), stdout=out, stderr=subprocess.STDOUT, text=True, timeout=timeout,
                    env=env, input=input,
                )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise Failed(f"`{' '.join(argv)}` did not finish within {timeout:.0f}s") from None
    except FileNotFoundError:
        raise Failed(f"`{argv[0]}` is not installed") from None
    if check and proc.returncode != 0:
        detail = tail(output.read_text()) if output else (proc.stderr or proc.stdout).strip()
        raise Failed(f"`{' '.join(argv)}` exited {proc.returncode}:\n{detail[-3000:]}")
    return proc


def tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def is_root() -> bool:
    return os.geteuid() == 0


def apt_install(packages: Sequence[str], log: Log) -> None:
    if not is_root() or shutil.which("apt-get") is None:
        raise Skip(f"{', '.join(packages)} missing, and this is not root with apt-get")
    log.say(f"  installing {' '.join(packages)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if run(install, 600, check=False, env=env).returncode == 0:
        return
    run(["apt-get", "update", "-q"], 600, env=env)
    proc = run(install, 600, check=False, env=env)
    if proc.returncode != 0:
        raise Skip(f"apt-get could not install {' '.join(packages)}: {tail(proc.stderr, 5)}")


# --- the Docker engine --------------------------------------------------------------------------


@dataclass
class Engine:
    docker_env: dict[str, str]
    compose: list[str]
    dockerd: subprocess.Popen[bytes] | None = None

    def docker(self, *args: str, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess:
        return run(["docker", *args], timeout, env=self.docker_env, **kw)

    def stop(self, log: Log) -> None:
        if self.dockerd is None or self.dockerd.poll() is not None:
            return
        log.say(f"  stopping the Docker engine this check started (pid {self.dockerd.pid})")
        self.dockerd.send_signal(signal.SIGTERM)
        try:
            self.dockerd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.dockerd.kill()
            self.dockerd.wait(timeout=10)


def engine_answers(timeout: float = 20) -> bool:
    try:
        proc = subprocess.run(["docker", "info"], capture_output=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return proc.returncode == 0


def start_engine(work: Path, log: Log) -> Engine:
    if shutil.which("docker") is None or shutil.which("dockerd") is None:
        apt_install(["docker.io"], log)
    dockerd: subprocess.Popen[bytes] | None = None
    if engine_answers():
        log.say("  a Docker engine is already running; using it")
    else:
        if not is_root():
            raise Skip("no Docker engine is running, and only root can start one")
        engine_log = work / "dockerd.log"
        log.say(f"  starting dockerd (log: {engine_log})")
        with engine_log.open("ab") as out:
            dockerd = subprocess.Popen(
                ["dockerd"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 90
        while not engine_answers(timeout=10):
            if dockerd.poll() is not None:
                raise Skip(f"dockerd exited {dockerd.returncode}:\n{tail(engine_log.read_text())}")
            if time.monotonic() > deadline:
                dockerd.kill()
                raise Skip(f"dockerd did not answer in 90s:\n{tail(engine_log.read_text())}")
            time.sleep(1)
    env = dict(os.environ)
    # Without the buildx plugin, a recent docker CLI refuses `docker build` unless told to
    # use the classic builder, which this Dockerfile is written for.
    if subprocess.run(["docker", "buildx", "version"], capture_output=True).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"
    engine = Engine(env, compose_command(log), dockerd)
    version = engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
    log.say(f"  engine {version}; compose: {' '.join(engine.compose)}")
    return engine


def compose_command(log: Log) -> list[str]:
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose") is None:
        apt_install(["docker-compose"], log)
    return ["docker-compose"]


# --- the base image -----------------------------------------------------------------------------


def debian_mirrors(sources: Sequence[Path]) -> tuple[str, str | None]:
    """(main archive, security archive) from apt's sources (one-line or deb822 format)."""
    main = security = None
    for path in sources:
        try:
            text = path.read_text()
        except OSError:
            continue
        entries: list[tuple[str, list[str]]] = []
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (ln.partition(":") for ln in stanza.splitlines())
                    if not k.lstrip().startswith("#") and v
                )
                if fields.get("types", "deb").split()[0] == "deb" and "uris" in fields:
                    entries.append((fields["uris"].split()[0], fields.get("suites", "").split()))
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append((words[1], [words[2]]))
        for uri, suites in entries:
            if not uri.startswith(("http://", "https://")):
                continue
            if any(s.endswith("-security") for s in suites):
                security = security or uri
            elif any(s.startswith("bookworm") for s in suites):
                main = main or uri
    return main or "http://deb.debian.org/debian", security


def image_exists(engine: Engine, image: str) -> bool:
    return engine.docker("image", "inspect", image, check=False).returncode == 0


def choose_base_image(engine: Engine, wanted: str, work: Path, log: Log) -> str:
    if wanted != "auto":
        if not image_exists(engine, wanted):
            engine.docker("pull", wanted, timeout=600)
        return wanted
    for image in (PYTHON_IMAGE, DEBIAN_IMAGE):
        if image_exists(engine, image):
            log.say(f"  {image} is here")
            return image
    pulled = engine.docker("pull", PYTHON_IMAGE, timeout=300, check=False)
    if pulled.returncode == 0:
        return PYTHON_IMAGE
    log.say(f"  cannot pull {PYTHON_IMAGE} ({tail(pulled.stderr, 1)}); making {DEBIAN_IMAGE}")
    make_debian_image(engine, work, log)
    return DEBIAN_IMAGE


def make_debian_image(engine: Engine, work: Path, log: Log) -> None:
    if shutil.which("debootstrap") is None:
        apt_install(["debootstrap"], log)
    if not is_root():
        raise Failed("debootstrap needs root")
    apt = Path("/etc/apt")
    main, security = debian_mirrors(
        [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    )
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=work))
    try:
        log.say(f"  debootstrap --variant=minbase bookworm from {main}")
        run(
            ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), main],
            900,
            output=work / "debootstrap.log",
        )
        lines = [f"deb {main} bookworm main", f"deb {main} bookworm-updates main"]
        if security:
            lines.append(f"deb {security} bookworm-security main")
        (rootfs / "etc/apt/sources.list").write_text("\n".join(lines) + "\n")
        slim_rootfs(rootfs)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(
            ["docker", "import", "-", DEBIAN_IMAGE],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            env=engine.docker_env,
            timeout=600,
        )
        tar.wait(timeout=60)
        if imported.returncode != 0 or tar.returncode != 0:
            raise Failed(f"docker import failed: {imported.stderr.strip()}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


# What Debian's own slim images leave out, and keep out of later installs: documentation (but
# the copyright files), manual pages, translations, package lists and caches.
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
"""
APT_CLEAN = """\
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
"""


def slim_rootfs(rootfs: Path) -> None:
    (rootfs / "etc/dpkg/dpkg.cfg.d/slim").write_text(DPKG_EXCLUDES)
    (rootfs / "etc/apt/apt.conf.d/slim-clean").write_text(APT_CLEAN)
    patterns = ["usr/share/man/*", "usr/share/info/*", "usr/share/locale/*", "usr/share/lintian/*"]
    patterns += ["var/lib/apt/lists/*", "var/cache/apt/*.bin", "var/cache/apt/archives/*.deb"]
    patterns += ["usr/share/doc/*/*"]
    for pattern in patterns:
        for path in rootfs.glob(pattern):
            if path.name == "copyright" and path.parent.parent.name == "doc":
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


# --- the image ----------------------------------------------------------------------------------


def prepare_context(log: Log) -> bool:
    """Trust the host's extra CA certificates in the build, and fill deploy/wheels/ with the
    wheels the host's pip resolves. True when the wheels are complete (build offline)."""
    for old in CA_DIR.glob("*.crt"):
        old.unlink()
    cas = sorted(HOST_CA_DIR.glob("*.crt")) if HOST_CA_DIR.is_dir() else []
    for ca in cas:
        shutil.copy2(ca, CA_DIR / ca.name)
    log.say(f"  {len(cas)} extra CA certificate(s) from {HOST_CA_DIR}")
    if sys.version_info[:2] != (3, 11):
        log.say("  this Python is not 3.11: the build downloads its own wheels")
        return False
    pip = [sys.executable, "-m", "pip", "download", "-q", "--dest", str(WHEELS)]
    torch = run([*pip, "--no-deps", TORCH], 600, check=False)
    if torch.returncode != 0:
        log.say(f"  no {TORCH} wheel for the host's pip: the build downloads it")
        return False
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as constraints:
        constraints.write(TORCH + "\n")
    try:
        deps = run(
            [*pip, "-c", constraints.name, str(ROOT), "setuptools>=69", "wheel"], 900, check=False
        )
    finally:
        os.unlink(constraints.name)
    # The project itself is built in the image, from its sources.
    for own in WHEELS.glob("forsaken-*"):
        own.unlink()
    if deps.returncode != 0:
        log.say(f"  pip download failed ({tail(deps.stderr, 2)}): the build downloads")
        return False
    size = sum(p.stat().st_size for p in WHEELS.glob("*.whl"))
    log.say(f"  {len(list(WHEELS.glob('*.whl')))} wheels, {size / 2**20:.0f} MiB, in {WHEELS}")
    return True


LABEL = "org.opencontainers.image.title=forsaken"  # set by deploy/Dockerfile on every stage


def build_image(engine: Engine, image: str, base: str, offline: bool, work: Path) -> None:
    """Build the builder stage under its own tag, then the image. With both tagged, what
    earlier builds left untagged can be pruned without losing the layers this one reuses."""
    argv = ["nice", "-n", "10", "docker", "build", "-f", "deploy/Dockerfile"]
    argv += ["--build-arg", f"BASE_IMAGE={base}"]
    if offline:
        argv += ["--build-arg", "PIP_NO_INDEX=1"]
    build_log = work / "build.log"
    build_log.write_text("")
    env = engine.docker_env
    run([*argv, "--target", "builder", "-t", f"{image}-builder", str(ROOT)], 900, env=env,
        output=build_log)  # fmt: skip
    run([*argv, "-t", image, str(ROOT)], 600, env=env, output=build_log)
    engine.docker("image", "prune", "-f", "--filter", f"label={LABEL}", timeout=300)


IMAGE_PROBE = r"""
import importlib.util, json, os, shutil, torch
print(json.dumps({
    "uid": os.getuid(),
    "cuda": torch.version.cuda,
    "present": [m for m in ("pytest", "hypothesis", "grpc_tools", "ruff", "pip", "setuptools")
                if importlib.util.find_spec(m) is not None],
    "tools": [t for t in ("gcc", "cc", "make", "g++") if shutil.which(t)],
}))
"""


def check_image(engine: Engine, image: str, log: Log) -> int:
    inspect = json.loads(engine.docker("image", "inspect", image).stdout)[0]
    config = inspect["Config"]
    size = int(inspect["Size"])
    log.say(f"  image {image}: {size / 1e6:.0f} MB ({size} bytes)")
    if config.get("User") in (None, "", "root", "0", "0:0"):
        raise Failed(f"the image runs as root (User={config.get('User')!r})")
    if not (config.get("Healthcheck") or {}).get("Test"):
        raise Failed("the image has no HEALTHCHECK")
    probe = engine.docker("run", "--rm", "--entrypoint", "python", image, "-c", IMAGE_PROBE)
    found = json.loads(probe.stdout.strip().splitlines()[-1])
    log.say(f"  in the image: {found}")
    if found["uid"] == 0:
        raise Failed("a container of the image runs as uid 0")
    if found["cuda"] is not None:
        raise Failed(f"the image's torch is a CUDA build ({found['cuda']})")
    if found["present"] or found["tools"]:
        raise Failed(f"build or test tools in the final image: {found}")
    return size


# --- the cluster --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    engine: Engine
    project: str
    env: dict[str, str]
    work: Path
    metrics_url: str

    def compose(self, *args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess:
        argv = [*self.engine.compose, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return run(argv, timeout, env=self.env, **kw)

    def containers(self, service: str) -> list[dict[str, Any]]:
        ids = self.engine.docker(
            "ps", "-aq",
            "--filter", f"label=com.docker.compose.project={self.project}",
            "--filter", f"label=com.docker.compose.service={service}",
        ).stdout.split()  # fmt: skip
        if not ids:
            return []
        return list(json.loads(self.engine.docker("inspect", *ids).stdout))

    def state(self, service: str) -> dict[str, Any]:
        found = self.containers(service)
        if len(found) != 1:
            raise Failed(f"expected one {service} container, found {len(found)}")
        return {**found[0]["State"], "RestartCount": found[0]["RestartCount"]}

    def logs(self, lines: int = 40) -> str:
        proc = self.compose("logs", "--no-color", "--tail", str(lines), timeout=60, check=False)
        return proc.stdout + proc.stderr

    def save_logs(self) -> Path:
        path = self.work / "compose.log"
        proc = self.compose("logs", "--no-color", timeout=120, check=False)
        path.write_text(proc.stdout + proc.stderr)
        return path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
            text = reply.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def completed_rounds(self) -> int:
        try:
            return int(self.metrics().get(("forsaken_rounds_total", (("status", "completed"),)), 0))
        except OSError:
            return -1

    def assert_alive(self) -> None:
        for service in ("server", *CLIENTS):
            st = self.state(service)
            if st["Status"] == "exited" and st["ExitCode"] != 0:
                raise Failed(f"{service} exited {st['ExitCode']}:\n{self.logs()}")


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Log) -> None:
    deadline = time.monotonic() + timeout
    last_said = 0.0
    while not check():
        if time.monotonic() > deadline:
            raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")
        if time.monotonic() - last_said > 20:
            log.say(f"  waiting for {what}")
            last_said = time.monotonic()
        time.sleep(2)


def wait_rounds(cluster: Cluster, rounds: int, log: Log) -> None:
    """Until the server's metrics count `rounds` completed rounds since it started."""

    def enough() -> bool:
        cluster.assert_alive()
        return cluster.completed_rounds() >= rounds

    wait_for(f"{rounds} completed rounds", enough, 300, log)
    log.say(f"  {cluster.completed_rounds()} rounds completed")


def json_document(text: str) -> dict[str, Any]:
    """The JSON object a command printed after its progress lines."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                return dict(json.loads("\n".join(lines[i:])))
    raise Failed(f"no JSON document in the output:\n{text[-2000:]}")


def file_forget(cluster: Cluster, timeout: float, log: Log) -> dict[str, Any]:
    proc = cluster.compose(
        "exec", "-T", FORGETTER,
        "forsaken", "forget", "--client", "/state", "--wait", "--json",
        "--timeout", str(int(timeout)),
        timeout=timeout + 60, check=False,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line and not line.startswith((" ", "{", "}", '"')):
            log.say(f"  | {line.strip()}")
    if proc.returncode != 0:
        raise Failed(f"forsaken forget exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    info = json_document(proc.stdout)
    if info.get("state") != "completed":
        raise Failed(f"the forget request ended {info.get('state')}: {info.get('reason')}")
    receipt = info.get("receipt") or {}
    if not receipt.get("evidence") or not receipt.get("model_sha256_after"):
        raise Failed(f"the receipt carries no evidence: {receipt}")
    return info


def check_status(cluster: Cluster, forget_id: str, resumed_after: int, log: Log) -> dict[str, Any]:
    proc = cluster.compose(
        "run", "--rm", "operator",
        "status", "--server", "server:7070", "--tls-dir", "/pki/operators/admin", "--json",
        timeout=180,
    )  # fmt: skip
    status = json_document(proc.stdout)
    forgets = {f["forget_id"]: f for f in status["forget_requests"]}
    log.say(
        f"  phase={status['phase']} completed_rounds={status['completed_rounds']} "
        f"clients={len(status['clients'])} forget {forget_id}: "
        f"{forgets.get(forget_id, {}).get('state')}"
    )
    if forgets.get(forget_id, {}).get("state") != "completed":
        raise Failed(f"`forsaken status` does not list {forget_id} as completed: {forgets}")
    if len(status["clients"]) != len(CLIENTS):
        raise Failed(f"`forsaken status` lists {len(status['clients'])} clients")
    if not status["completed_rounds"] > resumed_after:
        raise Failed(
            f"the restarted server did not resume after round {resumed_after}: "
            f"{status['completed_rounds']} completed rounds"
        )
    return status


def check_metrics(cluster: Cluster, min_rounds: int, log: Log) -> None:
    samples = cluster.metrics()
    names = {name for name, _ in samples}
    missing = [
        f for f in METRIC_FAMILIES if not any(n == f or n.startswith(f + "_") for n in names)
    ]
    if missing:
        raise Failed(f"/metrics lacks {missing}")

    def get(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), float("nan"))

    completed = get("forsaken_rounds_total", status="completed")
    forgot = get("forsaken_forget_requests", state="completed")
    received = get("forsaken_bytes_received_total")
    log.say(
        f"  rounds completed {completed:.0f}, aborted "
        f"{get('forsaken_rounds_total', status='aborted'):.0f}, clients connected "
        f"{get('forsaken_clients_connected'):.0f}, bytes received {received:.0f}, "
        f"forget requests completed {forgot:.0f}"
    )
    if not completed >= min_rounds:
        raise Failed(f"/metrics counts {completed} completed rounds, expected >= {min_rounds}")
    if forgot != 1:
        raise Failed(f"/metrics counts {forgot} completed forget requests, expected 1")
    if not received > 0:
        raise Failed("/metrics counts no bytes received")


def check_finish(cluster: Cluster, timeout: float, log: Log) -> None:
    def all_exited() -> bool:
        cluster.assert_alive()
        return all(cluster.state(c)["Status"] == "exited" for c in CLIENTS)

    wait_for("every client to exit after the last round", all_exited, timeout, log)
    time.sleep(15)  # long enough for a restart policy to bring a client back
    for client in CLIENTS:
        st = cluster.state(client)
        logs = cluster.engine.docker("logs", "--tail", "20", cluster.containers(client)[0]["Id"])
        said = "federation has finished" in logs.stdout + logs.stderr
        log.say(
            f"  {client}: {st['Status']}, exit {st['ExitCode']}, restarts {st['RestartCount']}, "
            f"said 'federation has finished': {said}"
        )
        if st["Status"] != "exited" or st["ExitCode"] != 0 or st["RestartCount"] != 0 or not said:
            raise Failed(f"{client} did not stay down after the federation finished: {st}")
    if cluster.state("server")["Status"] != "running":
        raise Failed("the server stopped after the federation finished")


def check_clean(cluster: Cluster) -> None:
    label = f"label=com.docker.compose.project={cluster.project}"
    left = cluster.engine.docker("ps", "-aq", "--filter", label).stdout.split()
    volumes = cluster.engine.docker("volume", "ls", "-q", "--filter", label).stdout.split()
    if left or volumes:
        raise Failed(f"`down -v` left containers {left} and volumes {volumes}")


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="deploy/cluster_check.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--base-image",
        default=os.environ.get("FORSAKEN_BASE_IMAGE", "auto"),
        help=f"the Dockerfile's BASE_IMAGE; auto: {PYTHON_IMAGE} if it is here or can be "
        f"pulled, else {DEBIAN_IMAGE}, made with debootstrap when missing",
    )
    p.add_argument("--image", default="forsaken:test-deploy", help="tag of the image built")
    p.add_argument("--project", default="forsaken-test-deploy", help="compose project name")
    p.add_argument("--rounds", type=int, default=20, help="rounds of the first federation")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "test-deploy", help="logs")
    p.add_argument(
        "--require-engine",
        action="store_true",
        default=os.environ.get("FORSAKEN_REQUIRE_DOCKER") == "1",
        help="fail instead of skipping where no Docker engine can start "
        "(env FORSAKEN_REQUIRE_DOCKER=1)",
    )
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    log = Log(file=(args.work / "test-deploy.log").open("w"))

    def on_term(signum: int, _frame: object) -> None:
        raise Failed(f"stopped by {signal.Signals(signum).name} (the time limit?)")

    signal.signal(signal.SIGTERM, on_term)
    engine: Engine | None = None
    cluster: Cluster | None = None
    try:
        with log.step("Docker engine"):
            engine = start_engine(args.work, log)
        with log.step("base image"):
            base = choose_base_image(engine, args.base_image, args.work, log)
            log.say(f"  BASE_IMAGE={base}")
        with log.step("build context (CA certificates, wheels)"):
            offline = prepare_context(log)
        with log.step("build deploy/Dockerfile"):
            build_image(engine, args.image, base, offline, args.work)
        with log.step("image: size, user, health check, contents"):
            check_image(engine, args.image, log)
        grpc_port, metrics_port = free_port(), free_port()
        env = {
            **engine.docker_env,
            "FORSAKEN_IMAGE": args.image,
            "FORSAKEN_BASE_IMAGE": base,
            "FORSAKEN_ROUNDS": str(args.rounds),
            "FORSAKEN_GRPC_PORT": str(grpc_port),
            "FORSAKEN_METRICS_PORT": str(metrics_port),
        }
        cluster = Cluster(
            engine, args.project, env, args.work, f"http://127.0.0.1:{metrics_port}/metrics"
        )
        # Part 1: a federation of --rounds rounds, to its end.
        with log.step("compose up (certs, server healthy, clients)"):
            cluster.compose("down", "-v", "--remove-orphans", timeout=180, check=False)
            cluster.compose("up", "-d", "--no-build", timeout=400)
        with log.step(f"federation runs its {args.rounds} rounds"):
            wait_rounds(cluster, args.rounds, log)
        with log.step("federation finishes; clients exit 0 and stay down"):
            check_finish(cluster, 300, log)
        # Part 2: the server restarted to run until stopped (it resumes from its volume), so
        # the ForgetMe cannot race the federation's end: a client leaves once it is told the
        # federation has finished, and its Owner API with it.
        with log.step("restart the server to run until stopped; clients rejoin"):
            cluster.env["FORSAKEN_ROUNDS"] = "0"
            cluster.compose("up", "-d", "--no-build", timeout=400)
            wait_rounds(cluster, 2, log)
        with log.step(f"ForgetMe through {FORGETTER}'s Owner API, --wait for the receipt"):
            info = file_forget(cluster, 420, log)
            receipt = info["receipt"]
            log.say(
                f"  {info['forget_id']}: {receipt.get('method')}, "
                f"{receipt.get('unlearning_rounds')} unlearning + "
                f"{receipt.get('recovery_rounds')} recovery rounds; evidence "
                + ", ".join(f"{k}={v:.4f}" for k, v in sorted(receipt["evidence"].items()))
            )
        with log.step("forsaken status (operator container, mTLS)"):
            check_status(cluster, info["forget_id"], args.rounds, log)
        with log.step("/metrics on the published port"):
            check_metrics(cluster, 2, log)
        with log.step("compose down -v"):
            cluster.save_logs()
            cluster.compose("down", "-v", "--remove-orphans", timeout=180)
            check_clean(cluster)
            cluster = None
    except Skip as exc:
        message = [
            "make test-deploy SKIPPED: no Docker engine could be used here.",
            *str(exc).splitlines()[:12],
            "The image, the compose cluster and the ForgetMe flow were NOT tested.",
        ]
        print(banner(message), file=sys.stderr, flush=True)
        log.summary()
        return 1 if args.require_engine else 0
    except Failed as exc:
        log.say(f"FAILED: {exc}")
        if cluster is not None:
            log.say(f"  containers' logs: {cluster.save_logs()}")
            print(tail(cluster.logs(), 80), flush=True)
        log.summary()
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if cluster is not None:
            cluster.compose("down", "-v", "--remove-orphans", timeout=180, check=False)
        if engine is not None:
            engine.stop(log)
    log.summary()
    log.say("make test-deploy: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

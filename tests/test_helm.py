"""The Helm chart in deploy/helm/forsaken, offline: it lints, renders, and every manifest
validates against the Kubernetes schemas of the oldest and newest supported versions; what
it renders is wired the way the daemons expect (state volumes, certificates, metrics port,
one identity per client pod), and its shell steps do the right thing when run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

helm = pytest.importorskip("helm_python", reason="dev extra helm-python-sdk")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="dev extra")
yaml = pytest.importorskip("yaml")

from cryptography import x509  # noqa: E402

from forsaken.common import certs  # noqa: E402
from forsaken.common.identity import KEY_FILE, NodeIdentity  # noqa: E402
from tests.test_deploy import cli_help  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "deploy" / "helm" / "forsaken"
# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
IDENTITY_FILES = (KEY_FILE, "cert.pem", "key.pem", "ca.pem")


def render(values: dict[str, Any] | None = None, release: str = "forsaken") -> list[dict]:
    chart = helm.Chart.load(CHART)
    out = chart.render(values or {}, name=release, namespace="fl", is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith(".yaml"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def container(sts: dict, name: str, init: bool = False) -> dict:
    spec = sts["spec"]["template"]["spec"]
    (found,) = [c for c in spec["initContainers" if init else "containers"] if c["name"] == name]
    return found


def arg(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_chart_lints_without_warnings() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"clients": {"replicas": 5}, "server": {"rounds": 50, "extraArgs": ["--log-level", "x"]}},
        {"clients": {"enabled": False}, "server": {"metrics": {"enabled": False}}},
        {"server": {"enabled": False}, "clients": {"serverAddress": "fl.example.org:7070"}},
        {
            "server": {"persistence": {"storageClass": "fast", "size": "20Gi"}},
            "clients": {"extraVolumes": [{"name": "data", "persistentVolumeClaim":
                                          {"claimName": "silo-data"}}],
                        "extraVolumeMounts": [{"name": "data", "mountPath": "/data"}],
                        "dataset": "/data/client-{i}.npz", "partition": False},
            "imagePullSecrets": [{"name": "registry"}],
        },
    ],
    ids=["defaults", "five-clients", "server-only", "clients-only", "storage-and-data"],
)  # fmt: skip
def test_manifests_validate_against_kubernetes_schemas(values: dict[str, Any]) -> None:
    docs = render(values)
    assert docs
    for version in KUBE_VERSIONS:
        for doc in docs:
            # strict: an unknown or misspelt field is an error, not silently dropped.
            kubernetes_validate.validate(doc, version, strict=True)


def test_validation_catches_a_broken_manifest() -> None:
    """The check above can fail: a StatefulSet with a string replica count does not pass."""
    sts = find(render(), "StatefulSet", "forsaken-client")
    sts["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, KUBE_VERSIONS[-1], strict=True)


def test_values_schema_rejects_bad_values() -> None:
    for bad in (
        {"clients": {"replicas": "three"}},
        {"clients": {"replicas": 0}},
        {"server": {"rounds": -1}},
        {"server": {"roundz": 3}},
        {"image": {"pullPolicy": "Sometimes"}},
    ):
        with pytest.raises(helm.HelmValuesError):
            render(bad)


def test_server_statefulset_keeps_its_state_and_exports_metrics() -> None:
    docs = render()
    sts = find(docs, "StatefulSet", "forsaken-server")
    assert sts["spec"]["replicas"] == 1
    pod = sts["spec"]["template"]
    server = container(sts, "server")
    argv = server["args"]
    assert argv[0] == "server"
    # The state directory is the persistent volume claim of the StatefulSet.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in server["volumeMounts"]}
    assert mounts[arg(argv, "--state-dir")] == claim["metadata"]["name"] == "state"
    # Certificates come from the server Secret, mounted read-only.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    tls_mount = next(m for m in server["volumeMounts"] if m["name"] == "tls")
    assert tls_mount["readOnly"] is True
    assert volumes["tls"]["secret"]["secretName"] == "forsaken-server-tls"
    keys = {i["key"] for i in volumes["tls"]["secret"]["items"]}
    for option in ("--tls-cert", "--tls-key", "--tls-ca"):
        assert os.path.dirname(arg(argv, option)) == tls_mount["mountPath"]
        assert os.path.basename(arg(argv, option)) in keys
    # Rounds run until stopped; quorum from the client count (3), one fewer to complete.
    assert (arg(argv, "--rounds"), arg(argv, "--min-clients"), arg(argv, "--min-completed")) == (
        "0",
        "3",
        "2",
    )
    # The metrics port is served, declared, and annotated for scraping on pod and Service.
    port = int(arg(argv, "--metrics-listen").rsplit(":", 1)[1])
    declared = {p["name"]: p["containerPort"] for p in server["ports"]}
    assert declared == {"grpc": 7070, "metrics": port}
    service = find(docs, "Service", "forsaken-server")
    for notes in (pod["metadata"]["annotations"], service["metadata"]["annotations"]):
        assert notes["prometheus.io/scrape"] == "true"
        assert notes["prometheus.io/port"] == str(port)
        assert notes["prometheus.io/path"] == "/metrics"
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "grpc": 7070,
        "metrics": port,
    }
    assert sts["spec"]["serviceName"] == "forsaken-server-headless"
    assert find(docs, "Service", "forsaken-server-headless")["spec"]["clusterIP"] == "None"
    # Health through the image's probe, over the server's own TLS set.
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["FORSAKEN_HEALTH_TLS_DIR"] == tls_mount["mountPath"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["exec"]["command"] == ["python", "-m", "forsaken.health"]


def test_pods_run_unprivileged_on_a_read_only_root() -> None:
    for sts in (d for d in render() if d["kind"] == "StatefulSet"):
        spec = sts["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        assert any(v["name"] == "tmp" and "emptyDir" in v for v in spec["volumes"])
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert "resources" in c


def test_every_daemon_option_the_chart_passes_exists() -> None:
    docs = render({"clients": {"tlsServerName": "fl.example.org"}})
    for name, words in (("forsaken-server", ("server",)), ("forsaken-client", ("client",))):
        sts = find(docs, "StatefulSet", name)
        argv = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        text = cli_help(words)
        assert text is not None
        for token in argv:
            if token.startswith("--"):
                assert token in text, f"{name} passes {token}, which `forsaken {words[0]}` lacks"


# --- the client pods' shell steps, run for real ---------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    certs.init_federation(out, ["forsaken-server"], clients=4)
    return out


def clients_secret(pki: Path, target: Path, clients: int) -> Path:
    """What `kubectl create secret generic ... --from-file=client-<i>.<file>=...` (as the README
    says) puts into the pod's /secrets."""
    target.mkdir()
    for i in range(clients):
        for name in IDENTITY_FILES:
            shutil.copy(pki / "clients" / f"client-{i}" / name, target / f"client-{i}.{name}")
    return target


def run_script(
    step: dict, hostname: str, extra_env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess:
    command = step["command"]
    assert command[:2] == ["sh", "-c"]
    env = {e["name"]: e["value"] for e in step.get("env", [])}
    return subprocess.run(
        [*command, *step.get("args", [])],
        env={"PATH": os.environ["PATH"], **env, **extra_env, "HOSTNAME": hostname},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_identity_step_gives_pod_i_the_identity_of_client_i(pki: Path, tmp_path: Path) -> None:
    sts = find(render({"clients": {"replicas": 3}}), "StatefulSet", "forsaken-client")
    step = container(sts, "identity", init=True)
    mounts = {m["name"]: m["mountPath"] for m in step["volumeMounts"]}
    assert mounts == {"state": "/state", "identities": "/secrets"}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["identities"]["secret"]["secretName"] == "forsaken-clients-tls"
    secrets = clients_secret(pki, tmp_path / "secrets", 3)
    state = tmp_path / "state"
    state.mkdir()
    where = {"SECRETS": str(secrets), "STATE": str(state)}

    done = run_script(step, "forsaken-client-2", where, tmp_path)
    assert done.returncode == 0, done.stderr
    for name in IDENTITY_FILES:
        assert (state / name).read_bytes() == (pki / "clients/client-2" / name).read_bytes()
        if name in (KEY_FILE, "key.pem"):
            assert (state / name).stat().st_mode & 0o077 == 0
    # The daemon loads that identity from its state dir, and the certificate names it.
    cert = x509.load_pem_x509_certificate((state / "cert.pem").read_bytes())
    assert certs.common_name_of(cert) == NodeIdentity.load_or_create(state).node_id
    # A restart does it again without complaint.
    assert run_script(step, "forsaken-client-2", where, tmp_path).returncode == 0

    # A state volume with another node's key is never given a new identity.
    shutil.copy(pki / "clients/client-1" / KEY_FILE, state / KEY_FILE)
    other = run_script(step, "forsaken-client-2", where, tmp_path)
    assert other.returncode == 1 and "refusing to change this node's identity" in other.stderr
    assert (state / KEY_FILE).read_bytes() == (pki / "clients/client-1" / KEY_FILE).read_bytes()

    # A pod beyond the Secret's clients is told what is missing.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    beyond = run_script(step, "forsaken-client-3", {**where, "STATE": str(fresh)}, tmp_path)
    assert beyond.returncode == 1
    assert "forsaken-clients-tls has no client-3" in beyond.stderr
    assert not list(fresh.iterdir())


def test_client_step_runs_partition_i_of_n(tmp_path: Path) -> None:
    values = {"clients": {"replicas": 5}}
    sts = find(render(values), "StatefulSet", "forsaken-client")
    client = container(sts, "client")
    # A stand-in `forsaken` on PATH shows what the daemon would be started with.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "forsaken"
    fake.write_text(
        '#!/bin/sh\necho "ARGS $*"\necho "PARTITION $FORSAKEN_CLIENT_PARTITION"\n'
        'echo "DATASET $FORSAKEN_CLIENT_DATASET"\n'
    )
    fake.chmod(0o755)
    path = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def started(hostname: str, step: dict) -> dict[str, str]:
        proc = subprocess.run(
            [*step["command"], *step["args"]],
            env={**{e["name"]: e["value"] for e in step["env"]}, **path, "HOSTNAME": hostname},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.returncode == 0, proc.stderr
        return dict(line.split(" ", 1) for line in proc.stdout.splitlines())

    seen = started("forsaken-client-3", client)
    assert seen["PARTITION"] == "3/5" and seen["DATASET"] == "mnist5k"
    argv = seen["ARGS"].split()
    assert argv[0] == "client"
    assert arg(argv, "--server") == "forsaken-server:7070"
    assert arg(argv, "--state-dir") == "/state"
    assert arg(argv, "--tls-cert") == "/state/cert.pem"
    # The server waits for all five, and completes rounds with four.
    server = find(render(values), "StatefulSet", "forsaken-server")
    server_argv = container(server, "server")["args"]
    assert (arg(server_argv, "--min-clients"), arg(server_argv, "--min-completed")) == ("5", "4")

    # Per-client files instead of a shared data set: {i} is the pod's number, no partition.
    own = find(
        render({"clients": {"dataset": "/data/client-{i}.npz", "partition": False}}),
        "StatefulSet",
        "forsaken-client",
    )
    seen = started("forsaken-client-1", container(own, "client"))
    assert seen["DATASET"] == "/data/client-1.npz" and seen["PARTITION"] == ""
    # Its health probes ask the daemon's Owner API in its state directory.
    for probe in ("startupProbe", "livenessProbe"):
        command = client[probe]["exec"]["command"]
        assert command == ["python", "-m", "forsaken.health", "--owner", "/state"]


def test_server_or_clients_alone() -> None:
    server_only = render({"clients": {"enabled": False}})
    assert [d["metadata"]["name"] for d in server_only if d["kind"] == "StatefulSet"] == [
        "forsaken-server"
    ]
    clients_only = render({"server": {"enabled": False}, "clients": {"serverAddress": "fl:7070"}})
    assert [d["metadata"]["name"] for d in clients_only if d["kind"] == "StatefulSet"] == [
        "forsaken-client"
    ]
    sts = find(clients_only, "StatefulSet", "forsaken-client")
    assert arg(container(sts, "client")["args"], "--server") == "fl:7070"
    # Another release name gives another set of names, so two releases can share a namespace.
    other = render(release="silo-b")
    assert {d["metadata"]["name"] for d in other if d["kind"] == "StatefulSet"} == {
        "silo-b-forsaken-server",
        "silo-b-forsaken-client",
    }

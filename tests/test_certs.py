"""The federation PKI: chains verify, client CNs are node ids, files are private, and
re-running never replaces a CA or an identity."""

from __future__ import annotations

import argparse
import ipaddress
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509 import verification as v
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from forsaken.cli.certs import add_certs_arguments, run_certs
from forsaken.common import certs
from forsaken.common.errors import ConfigError
from forsaken.common.identity import KEY_FILE, NodeIdentity, node_id_for

HOSTS = ["server", "fleet.example", "10.0.0.5"]


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def verifier_builder(ca: x509.Certificate) -> v.PolicyBuilder:
    return v.PolicyBuilder().store(v.Store([ca]))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sans_of(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


@pytest.fixture
def layout(tmp_path: Path) -> certs.Layout:
    return certs.init_federation(tmp_path / "fed", HOSTS, clients=3, operators=("admin", "ops"))


def test_layout_has_every_file(layout: certs.Layout) -> None:
    root = layout.root
    expected = ["ca.pem", "ca.key", "server/cert.pem", "server/key.pem", "server/ca.pem"]
    for i in range(3):
        expected += [f"clients/client-{i}/{n}" for n in (KEY_FILE, "cert.pem", "key.pem", "ca.pem")]
    for op in ("admin", "ops"):
        expected += [f"operators/{op}/{n}" for n in ("cert.pem", "key.pem", "ca.pem")]
    missing = [p for p in expected if not (root / p).is_file()]
    assert not missing
    assert [e.role for e in layout.entries] == [
        certs.Role.CA,
        certs.Role.SERVER,
        *[certs.Role.NODE] * 3,
        *[certs.Role.OPERATOR] * 2,
    ]
    assert all(e.written for e in layout.entries)


def test_server_chain_verifies_for_every_name(layout: certs.Layout) -> None:
    ca = load_cert(layout.ca_cert)
    server = load_cert(layout.server_dir / "cert.pem")
    b = verifier_builder(ca)
    names = [v.DNSName("server"), v.DNSName("fleet.example"), v.DNSName("localhost")]
    ips = [v.IPAddress(ipaddress.ip_address(a)) for a in ("10.0.0.5", "127.0.0.1", "::1")]
    for name in [*names, *ips]:
        chain = b.build_server_verifier(name).verify(server, [])
        assert chain[-1] == ca
    with pytest.raises(v.VerificationError):
        b.build_server_verifier(v.DNSName("elsewhere.example")).verify(server, [])


def test_server_sans_hold_dns_names_and_ips(layout: certs.Layout) -> None:
    sans = sans_of(load_cert(layout.server_dir / "cert.pem"))
    assert set(sans.get_values_for_type(x509.DNSName)) == {"server", "fleet.example", "localhost"}
    ips = {str(a) for a in sans.get_values_for_type(x509.IPAddress)}
    assert ips == {"10.0.0.5", "127.0.0.1", "::1"}


def test_client_cn_is_the_node_id_of_the_generated_key(layout: certs.Layout) -> None:
    ca = load_cert(layout.ca_cert)
    seen = set()
    for i in range(3):
        directory = layout.client_dir(i)
        raw = (directory / KEY_FILE).read_bytes()
        assert len(raw) == 32  # the raw format NodeIdentity.load_or_create reads
        identity = NodeIdentity.load_or_create(directory)
        cert = load_cert(directory / "cert.pem")
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        assert cn == identity.node_id == node_id_for(identity.public_key)
        assert certs.role_of(cn) is certs.Role.NODE
        client = verifier_builder(ca).build_client_verifier().verify(cert, [])
        assert client.chain[-1] == ca
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
        seen.add(cn)
    assert len(seen) == 3
    assert set(layout.node_ids) == seen


def test_operator_certs_are_marked(layout: certs.Layout) -> None:
    ca = load_cert(layout.ca_cert)
    cert = load_cert(layout.operator_dir("admin") / "cert.pem")
    verifier_builder(ca).build_client_verifier().verify(cert, [])
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    ou = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
    assert (cn, ou) == ("operator:admin", "operators")
    assert certs.role_of(cn) is certs.Role.OPERATOR


def test_private_files_are_0600_and_certificates_readable(layout: certs.Layout) -> None:
    root = layout.root
    private = [root / "ca.key", *root.rglob("key.pem"), *root.rglob(KEY_FILE)]
    assert len(private) == 1 + 6 + 3
    assert {p: mode(p) for p in private} == {p: 0o600 for p in private}
    assert all(mode(p) == 0o644 for p in root.rglob("*.pem") if p.name != "key.pem")


def test_rerun_keeps_ca_keys_and_certificates(layout: certs.Layout) -> None:
    before = {p: p.read_bytes() for p in layout.root.rglob("*") if p.is_file()}
    again = certs.init_federation(layout.root, HOSTS, clients=3, operators=("admin", "ops"))
    assert not any(e.written for e in again.entries)
    assert {p: p.read_bytes() for p in layout.root.rglob("*") if p.is_file()} == before


def test_rerun_adds_only_what_is_missing(layout: certs.Layout) -> None:
    ca_pem = layout.ca_cert.read_bytes()
    node_keys = [(layout.client_dir(i) / KEY_FILE).read_bytes() for i in range(3)]
    grown = certs.init_federation(layout.root, [*HOSTS, "new.example"], clients=4)
    written = {e.name for e in grown.entries if e.written}
    # The server gains a name, so it is reissued; client-3 is new; nothing else changes.
    assert written == {"server", "client-3"}
    assert layout.ca_cert.read_bytes() == ca_pem
    assert [(layout.client_dir(i) / KEY_FILE).read_bytes() for i in range(3)] == node_keys
    sans = sans_of(load_cert(layout.server_dir / "cert.pem"))
    assert "new.example" in sans.get_values_for_type(x509.DNSName)


def test_refuses_to_replace_a_partial_ca(layout: certs.Layout) -> None:
    (layout.root / "ca.key").unlink()
    ca_pem = layout.ca_cert.read_bytes()
    with pytest.raises(ConfigError, match=r"ca\.key does not exist.*--force"):
        certs.init_federation(layout.root, HOSTS, clients=3)
    assert layout.ca_cert.read_bytes() == ca_pem


def test_force_makes_a_new_ca_and_keeps_node_identities(layout: certs.Layout) -> None:
    old_ca = layout.ca_cert.read_bytes()
    node_ids = layout.node_ids
    fresh = certs.init_federation(layout.root, HOSTS, clients=3, force=True)
    assert all(e.written for e in fresh.entries)
    assert layout.ca_cert.read_bytes() != old_ca
    assert fresh.node_ids == node_ids
    ca = load_cert(layout.ca_cert)
    for i in range(3):
        verifier_builder(ca).build_client_verifier().verify(
            load_cert(layout.client_dir(i) / "cert.pem"), []
        )


def test_long_server_host_gets_a_short_cn_and_is_kept_on_rerun(tmp_path: Path) -> None:
    host = ".".join(["a" * 60] * 3)
    certs.init_federation(tmp_path, [host], clients=0)
    cert = load_cert(tmp_path / "server" / "cert.pem")
    assert len(certs.common_name_of(cert)) == 64
    assert host in sans_of(cert).get_values_for_type(x509.DNSName)
    again = certs.init_federation(tmp_path, [host], clients=0)
    assert not any(e.written for e in again.entries)


def test_certificates_close_to_expiry_are_renewed(tmp_path: Path) -> None:
    start = datetime.now(UTC) - timedelta(days=360)
    certs.init_federation(tmp_path, ["server"], clients=1, days=365, now=start)
    again = certs.init_federation(tmp_path, ["server"], clients=1)
    assert {e.name for e in again.entries if e.written} == {"server", "client-0", "admin"}


def test_issue_for_an_existing_client_state_dir(layout: certs.Layout, tmp_path: Path) -> None:
    state = tmp_path / "client-state"
    identity = NodeIdentity.load_or_create(state)  # what the client daemon does on first start
    entry = certs.issue_for_node(layout.root, state)
    cert = load_cert(state / "cert.pem")
    assert entry.common_name == identity.node_id
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == identity.node_id
    verifier_builder(load_cert(layout.ca_cert)).build_client_verifier().verify(cert, [])
    assert mode(state / "key.pem") == 0o600
    assert (state / "ca.pem").read_bytes() == layout.ca_cert.read_bytes()
    assert NodeIdentity.load_or_create(state).node_id == identity.node_id  # key untouched


def test_issue_refuses_a_dir_without_node_key(layout: certs.Layout, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"node_key\.ed25519 does not exist"):
        certs.issue_for_node(layout.root, tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


def test_issue_needs_a_ca(tmp_path: Path) -> None:
    NodeIdentity.load_or_create(tmp_path / "state")
    with pytest.raises(ConfigError, match=r"ca\.pem does not exist"):
        certs.issue_for_node(tmp_path / "nowhere", tmp_path / "state")


def test_client_cert_accepts_key_bytes_key_object_or_node_id() -> None:
    ca = certs.create_ca()
    identity = NodeIdentity.generate()
    for node in (identity.public_key, identity.private_key.public_key(), identity.node_id):
        cert = certs.issue_client_cert(ca, node).cert
        assert certs.common_name_of(cert) == identity.node_id
    with pytest.raises(ConfigError, match="not a node id"):
        certs.issue_client_cert(ca, "operator:admin")
    with pytest.raises(ConfigError, match="32 bytes"):
        certs.issue_client_cert(ca, b"short")


@pytest.mark.parametrize(
    ("cn", "role"),
    [
        ("0123456789abcdef0123456789abcdef", certs.Role.NODE),
        ("0123456789ABCDEF0123456789ABCDEF", None),  # node ids are lowercase hex
        ("operator:admin", certs.Role.OPERATOR),
        ("operator:", None),
        ("server:fleet.example", certs.Role.SERVER),
        ("admin", None),
        (None, None),
    ],
)
def test_role_of(cn: str | None, role: certs.Role | None) -> None:
    assert certs.role_of(cn) is role


@pytest.mark.parametrize("bad", ["bad host", "-x.example", "a" * 64 + ".example"])
def test_bad_server_host_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="neither an IP address nor a DNS name"):
        certs.issue_server_cert(certs.create_ca(), [bad])


def test_bad_operator_name_and_days(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="operator name"):
        certs.init_federation(tmp_path, ["server"], 0, operators=("../escape",))
    with pytest.raises(ConfigError, match="1 to 36500 days"):
        certs.init_federation(tmp_path, ["server"], 0, days=0)
    assert not (tmp_path / "ca.pem").exists()


def test_check_key_pair_rejects_a_foreign_key() -> None:
    ca = certs.create_ca()
    a, b = certs.issue_operator_cert(ca, "a"), certs.issue_operator_cert(ca, "b")
    assert certs.check_key_pair(a.cert_pem(), a.key_pem(), "a") == a.cert
    with pytest.raises(ConfigError, match="does not belong"):
        certs.check_key_pair(a.cert_pem(), b.key_pem(), "mixed")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="forsaken certs")
    add_certs_arguments(parser)
    return parser.parse_args(argv)


def test_cli_init_and_issue_print_what_they_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pki"
    argv = ["init", "--out", str(out), "--server-host", "server", "--server-host", "10.1.2.3"]
    assert run_certs(parse([*argv, "--clients", "2", "--operator", "alice", "--days", "30"])) == 0
    text = capsys.readouterr().out
    node_ids = [
        NodeIdentity.load_or_create(out / "clients" / f"client-{i}").node_id for i in (0, 1)
    ]
    for expected in (*node_ids, "operator:alice", "server:server", "written"):
        assert expected in text
    cert = load_cert(out / "server" / "cert.pem")
    assert timedelta(days=29) < cert.not_valid_after_utc - cert.not_valid_before_utc
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < timedelta(days=31)

    assert (
        run_certs(
            parse(["issue", "--ca", str(out), "--state-dir", str(out / "clients" / "client-1")])
        )
        == 0
    )
    assert node_ids[1] in capsys.readouterr().out


def test_cli_requires_its_arguments() -> None:
    with pytest.raises(SystemExit):
        parse(["init", "--out", "x", "--clients", "1"])  # no --server-host
    with pytest.raises(SystemExit):
        parse(["issue", "--ca", "x"])  # no --state-dir

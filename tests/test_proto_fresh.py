"""The committed generated code must match what protoc makes from the committed protos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATED = sorted((ROOT / "protos" / "forsaken" / "v1").glob("*_pb2*.py*"))


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    protos = sorted((ROOT / "protos" / "forsaken" / "v1").glob("*.proto"))
    assert protos, "no protos found"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *map(str, protos),
        ],
        check=True,
    )
    fresh = sorted((tmp_path / "forsaken" / "v1").glob("*_pb2*.py*"))
    assert [p.name for p in fresh] == [p.name for p in GENERATED], "generated file set differs"
    stale = [
        p.name for p, q in zip(GENERATED, fresh, strict=True) if p.read_bytes() != q.read_bytes()
    ]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


def test_generated_modules_import_inside_namespace() -> None:
    from forsaken.v1 import admin_pb2_grpc, fleet_pb2_grpc, owner_pb2_grpc

    assert fleet_pb2_grpc.FleetStub and admin_pb2_grpc.AdminStub and owner_pb2_grpc.OwnerStub

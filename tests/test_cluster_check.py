"""deploy/cluster_check.py (`make test-deploy`) without Docker: it reads apt's mirrors in
both formats, finds the JSON a command printed after its progress lines, and where no engine
can start it says so loudly and never passes silently."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

PATH = Path(__file__).resolve().parents[1] / "deploy" / "cluster_check.py"


@pytest.fixture(scope="module")
def cc() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cluster_check", PATH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster_check"] = module
    spec.loader.exec_module(module)
    return module


def test_mirrors_from_deb822_and_one_line_sources(cc: ModuleType, tmp_path: Path) -> None:
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n"
    )
    assert cc.debian_mirrors([deb822]) == (
        "http://mirror.example/debian",
        "http://mirror.example/debian-security",
    )
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://other.example/debian bookworm main\n"
        "deb file:/local bookworm main\n"
    )
    assert cc.debian_mirrors([one_line, tmp_path / "missing.list"]) == (
        "http://other.example/debian",
        None,
    )
    assert cc.debian_mirrors([]) == ("http://deb.debian.org/debian", None)


def test_json_after_progress_lines(cc: ModuleType) -> None:
    out = 'request r: all samples\n  [2/6] requested\n{\n  "state": "completed"\n}\n'
    assert cc.json_document(out) == {"state": "completed"}
    with pytest.raises(cc.Failed, match="no JSON document"):
        cc.json_document("forget refused: UNAVAILABLE\n")


@pytest.mark.parametrize("required", [False, True])
def test_no_engine_is_a_loud_skip(
    cc: ModuleType,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    required: bool,
) -> None:
    def no_engine(work: Path, log: object) -> None:
        raise cc.Skip("dockerd exited 1:\nfailed to mount overlay: permission denied")

    monkeypatch.setattr(cc, "start_engine", no_engine)
    argv = ["--work", str(tmp_path), *(["--require-engine"] if required else [])]
    assert cc.main(argv) == (1 if required else 0)
    captured = capsys.readouterr()
    assert "make test-deploy SKIPPED" in captured.err
    assert "NOT tested" in captured.err and "permission denied" in captured.err
    assert "passed" not in captured.out.splitlines()[-1]
    assert "Docker engine" in (tmp_path / "test-deploy.log").read_text()

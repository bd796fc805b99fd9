"""Finding a task by reference, and the CLI error (exit 2, no traceback) when it cannot be had."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from forsaken.common.errors import ConfigError
from forsaken.common.task import Task
from forsaken.common.task_loader import absolute_reference, load_task, resolve_task
from forsaken.launch import forsaken_command

TASK_FILE = """
from torch import nn
from forsaken.common.task import Task, split
import numpy as np
from helper import WIDTH  # a neighbour module of the task file

x = np.random.default_rng(0).normal(size=(60, 4)).astype(np.float32)
y = (x[:, 0] > 0).astype(np.int64)
task = Task(
    name="tiny",
    model=lambda: nn.Sequential(nn.Linear(4, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 2)),
    data=lambda request: split("tiny", x, y),
)
def make_task():
    return task
not_a_task = 42
"""


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    (tmp_path / "tiny_task.py").write_text(TASK_FILE)
    (tmp_path / "helper.py").write_text("WIDTH = 8\n")
    return tmp_path


def test_a_file_reference_imports_the_file_with_its_folder_on_the_path(task_dir: Path) -> None:
    task = load_task(f"{task_dir / 'tiny_task.py'}:task")
    assert isinstance(task, Task) and task.name == "tiny"
    assert load_task(f"{task_dir / 'tiny_task.py'}:make_task") is task  # a factory


def test_a_module_reference_imports_an_installed_module() -> None:
    task = load_task("examples.sequence:task")
    assert task.name == "mnist1d-conv"


def test_no_reference_means_the_built_in_task() -> None:
    assert resolve_task("", "digits", "cnn").architecture == "cnn"


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_colon", "is not of the form module:attr or path/to/file.py:attr"),
        ("{dir}/missing.py:task", "does not exist or is not a file"),
        ("{dir}/tiny_task.py:nothing", "has no attribute 'nothing' \\(it defines"),
        ("{dir}/tiny_task.py:not_a_task", "names a int, not a forsaken.common.task.Task"),
        ("{dir}/syntax.py:task", "importing it failed: SyntaxError"),
        ("{dir}/needs.py:task", "ModuleNotFoundError.*is 'package_nobody_has' installed"),
        ("no_such_module_here:task", "importing it failed: ModuleNotFoundError"),
    ],
)
def test_bad_references_are_config_errors(task_dir: Path, reference: str, message: str) -> None:
    (task_dir / "syntax.py").write_text("def broken(:\n")
    (task_dir / "needs.py").write_text("import package_nobody_has\n")
    with pytest.raises(ConfigError, match=message):
        load_task(reference.format(dir=task_dir))


def test_absolute_reference_makes_file_paths_absolute(task_dir: Path) -> None:
    assert absolute_reference("pkg.mod:task") == "pkg.mod:task"
    assert absolute_reference("examples/sequence.py:task").startswith("/")


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        forsaken_command(*args), cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_a_broken_task_is_a_cli_error_on_both_daemons(task_dir: Path) -> None:
    (task_dir / "bad.py").write_text(
        textwrap.dedent(
            """
            from torch import nn
            from forsaken.common.task import Task, split
            import numpy as np
            task = Task("bad", model=lambda: nn.Linear(3, 2),
                        data=lambda r: split("bad", np.zeros((30, 4)), np.arange(30) % 2))
            """
        )
    )
    for daemon in ("server", "client"):
        out = run_cli(
            daemon, "--task", "bad.py:task", "--state-dir", str(task_dir / daemon), cwd=task_dir
        )
        assert out.returncode == 2, out.stderr
        assert f"forsaken {daemon}: error: task 'bad': a forward pass of the model failed" in (
            out.stderr
        )
        assert "Traceback" not in out.stderr


def test_the_task_option_comes_from_toml_and_the_environment(task_dir: Path) -> None:
    import os

    toml = task_dir / "server.toml"
    toml.write_text('task = "missing_from_toml.py:task"\n')
    out = run_cli("server", "--config", str(toml), cwd=task_dir)
    assert out.returncode == 2 and "missing_from_toml.py does not exist" in out.stderr
    env = {**os.environ, "FORSAKEN_CLIENT_TASK": "missing_from_env.py:task"}
    out = run_cli("client", "--state-dir", str(task_dir / "c"), cwd=task_dir, env=env)
    assert out.returncode == 2 and "missing_from_env.py does not exist" in out.stderr


def test_a_state_directory_keeps_the_model_it_was_started_with(task_dir: Path) -> None:
    from forsaken.common.errors import InvalidPayload
    from forsaken.server.app import ServerConfig, ServerDaemon

    wider = task_dir / "wider.py"
    wider.write_text(
        (task_dir / "tiny_task.py").read_text().replace("from helper import WIDTH", "WIDTH = 16")
    )
    state = task_dir / "server"
    first = ServerDaemon(
        ServerConfig(
            state_dir=state, task=f"{task_dir / 'tiny_task.py'}:task", listen="127.0.0.1:0"
        )
    )
    first.ledger.close()
    first.lock.release()
    again = ServerDaemon(
        ServerConfig(
            state_dir=state, task=f"{task_dir / 'tiny_task.py'}:task", listen="127.0.0.1:0"
        )
    )  # the same task resumes
    again.ledger.close()
    again.lock.release()
    with pytest.raises(InvalidPayload, match=r"holds a federation for model tiny@\w+/4/2/"):
        ServerDaemon(ServerConfig(state_dir=state, task=f"{wider}:task", listen="127.0.0.1:0"))

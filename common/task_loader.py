"""Finding a task by reference: `--task package.module:attr` or `--task path/to/file.py:attr`.

The code is already installed on the machine (as a Flower app is): the reference only names it.
A file reference imports that file as a module, with its folder on `sys.path` so it can import
its neighbours; a module reference imports the module, with the working directory on `sys.path`
(appended, so it never shadows an installed package). The attribute may be a `Task` or a
function of no arguments that returns one. Anything that goes wrong is a ConfigError naming the
reference and the problem (the CLI prints it and exits 2), never a traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from forsaken.common.errors import ConfigError, ForsakenError
from forsaken.common.task import Task, builtin_task

_FORM = "module:attr or path/to/file.py:attr"


def resolve_task(reference: str, dataset: str, architecture: str) -> Task:
    """The task of `--task`, or, without one, the built-in task of `--dataset`/`--architecture`."""
    if reference.strip():
        return load_task(reference)
    return builtin_task(dataset, architecture)


def load_task(reference: str) -> Task:
    """Import the object `reference` names and check it is a Task."""
    where, sep, attr = reference.strip().rpartition(":")
    if not sep or not where or not attr:
        raise ConfigError(f"--task {reference!r} is not of the form {_FORM}")
    module = (
        _import_file(where, reference)
        if is_file_reference(where)
        else _import_module(where, reference)
    )
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            names = sorted(n for n in vars(module) if not n.startswith("_"))
            raise ConfigError(
                f"--task {reference!r}: {module.__name__} has no attribute {attr!r} "
                f"(it defines {', '.join(names[:12]) or 'nothing public'})"
            )
        target = getattr(target, part)
    if not isinstance(target, Task) and callable(target):
        target = _call_factory(target, reference)
    if not isinstance(target, Task):
        raise ConfigError(
            f"--task {reference!r} names a {type(target).__name__}, not a "
            "forsaken.common.task.Task (nor a function returning one)"
        )
    return target


def is_file_reference(where: str) -> bool:
    """True for the `path/to/file.py` form of a reference's module part."""
    return where.endswith(".py") or "/" in where or os.sep in where


def absolute_reference(reference: str) -> str:
    """The same reference with a file path made absolute, for processes in other folders."""
    where, sep, attr = reference.strip().rpartition(":")
    if sep and is_file_reference(where):
        return f"{Path(where).expanduser().resolve()}:{attr}"
    return reference


def _import_file(where: str, reference: str) -> ModuleType:
    path = Path(where).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"--task {reference!r}: {where} does not exist or is not a file")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    # A name of its own per file, so two task files called task.py do not replace each other.
    tag = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    name = f"forsaken_task_{path.stem}_{tag}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"--task {reference!r}: {where} cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle-free typing look modules up by name
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:
        sys.modules.pop(name, None)
        raise _import_error(reference, exc) from exc
    return module


def _import_module(where: str, reference: str) -> ModuleType:
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)
    try:
        return importlib.import_module(where)
    except (Exception, SystemExit) as exc:
        raise _import_error(reference, exc) from exc


def _import_error(reference: str, exc: BaseException) -> ForsakenError:
    if isinstance(exc, ForsakenError):
        return ConfigError(f"--task {reference!r}: {exc}")
    hint = ""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        hint = f" (is {exc.name.split('.')[0]!r} installed where this daemon runs?)"
    return ConfigError(
        f"--task {reference!r}: importing it failed: {type(exc).__name__}: {exc}{hint}"
    )


def _call_factory(factory: Callable[[], object], reference: str) -> object:
    try:
        return factory()
    except ForsakenError as exc:
        raise ConfigError(f"--task {reference!r}: {exc}") from exc
    except Exception as exc:
        raise ConfigError(
            f"--task {reference!r}: calling it failed: {type(exc).__name__}: {exc}"
        ) from exc

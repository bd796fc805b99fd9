"""Layered configuration: defaults < TOML file < environment < command-line flags.

A config is a frozen dataclass whose fields carry `help` metadata. `add_arguments` turns the
fields into argparse flags, and `resolve` merges the layers, converting and validating each
value, so a bad value anywhere names its source and the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from forsaken.common.errors import ConfigError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with the help text shown by `--help` and in the README."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def env_name(prefix: str, field_name: str) -> str:
    return f"{prefix}_{field_name.upper()}"


def add_arguments(parser: argparse.ArgumentParser, cls: type, env_prefix: str) -> None:
    """Add one flag per field; defaults are left as None so unset flags do not override."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with any of the options below (keys use underscores).",
    )
    for field in dataclasses.fields(cls):
        kind = _base_type(cls, field.name)
        helptext = field.metadata.get("help", "")
        default = field.default
        shown = (
            ""
            if default is None
            else f" (default: {default}; env {env_name(env_prefix, field.name)})"
        )
        kwargs: dict[str, Any] = {"default": None, "help": helptext + shown, "dest": field.name}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            choices = field.metadata.get("choices")
            if choices:
                kwargs["choices"] = choices  # argparse shows them as {a,b,...}
            else:
                kwargs["metavar"] = field.name.upper()
        parser.add_argument(flag_name(field.name), **kwargs)


def resolve(
    cls: type[T],
    args: argparse.Namespace | None = None,
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str,
    toml_path: Path | None = None,
) -> T:
    """Build a `cls` from the layers; raise ConfigError naming the bad value and its source."""
    env = os.environ if env is None else env
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if toml_path is None and args is not None:
        toml_path = getattr(args, "config", None)
    if toml_path is not None:
        for key, raw in _read_toml(Path(toml_path)).items():
            if key not in names:
                raise ConfigError(f"{toml_path}: unknown option {key!r}")
            values[key] = _convert(cls, key, raw, f"{toml_path}:{key}")
    for name in names:
        var = env_name(env_prefix, name)
        if var in env:
            values[name] = _convert(cls, name, env[var], f"environment {var}")
    if args is not None:
        for name in names:
            raw = getattr(args, name, None)
            if raw is not None:
                values[name] = _convert(cls, name, raw, flag_name(name))
    try:
        config = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def describe(cls: type) -> list[tuple[str, str, str, str]]:
    """(flag, env var suffix, default, help) rows for documentation."""
    rows = []
    for field in dataclasses.fields(cls):
        help_text = field.metadata.get("help", "")
        choices = field.metadata.get("choices")
        if choices:
            help_text += " One of: " + ", ".join(f"`{c}`" for c in choices) + "."
        rows.append((flag_name(field.name), field.name.upper(), repr(field.default), help_text))
    return rows


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # Allow either a flat file or one with a [server]/[client] table holding the options.
    return data


def _base_type(cls: type, name: str) -> type:
    hints = typing.get_type_hints(cls)
    hint = hints[name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0]
    return hint


def _convert(cls: type, name: str, raw: Any, source: str) -> Any:
    kind = _base_type(cls, name)
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off"}:
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(f"not an integer: {raw!r}")
            try:
                return int(raw)
            except ValueError:
                raise ValueError(f"not an integer: {raw!r}") from None
        if kind is float:
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"not a number: {raw!r}") from None
        if kind is Path:
            return Path(raw)
        if kind is str:
            if not isinstance(raw, str | int | float):
                raise ValueError(f"not a string: {raw!r}")
            return str(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return raw


def log_level_option() -> Any:
    """`--log-level`, the same for every daemon."""
    return option(
        "info",
        "Least severe messages logged (to stderr); certificate and connection problems are "
        "warnings.",
        choices=("debug", "info", "warning", "error"),
    )


def log_format_option() -> Any:
    """`--log-format`, the same for every daemon."""
    return option(
        "text",
        "text: one human-readable line per message; json: one JSON object per line.",
        choices=("text", "json"),
    )

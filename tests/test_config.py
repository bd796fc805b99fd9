"""Layered configuration: defaults < TOML < environment < flags, with clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from forsaken.common.config import add_arguments, resolve
from forsaken.common.errors import ConfigError
from forsaken.common.forget_methods import ForgetMethod
from forsaken.server.app import ENV_PREFIX, ServerConfig


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServerConfig, ENV_PREFIX)
    return parser.parse_args(argv)


def test_defaults_work_with_no_configuration() -> None:
    cfg = resolve(ServerConfig, parse([]), env={}, env_prefix=ENV_PREFIX)
    assert cfg == ServerConfig()


def test_layers_override_in_order(tmp_path: Path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text(
        'rounds = 7\nmin_clients = 4\nfraction = 0.5\nlisten = "0.0.0.0:9000"\ninsecure = true\n'
    )
    env = {"FORSAKEN_SERVER_MIN_CLIENTS": "5", "FORSAKEN_SERVER_EVALUATE": "false"}
    cfg = resolve(
        ServerConfig,
        parse(["--config", str(toml), "--fraction", "0.25"]),
        env=env,
        env_prefix=ENV_PREFIX,
    )
    assert cfg.rounds == 7  # TOML
    assert cfg.min_clients == 5  # env beats TOML
    assert cfg.fraction == 0.25  # flag beats TOML
    assert cfg.evaluate is False
    assert cfg.listen == "0.0.0.0:9000"


@pytest.mark.parametrize(
    ("argv", "env", "toml", "message"),
    [
        (["--rounds", "x"], {}, None, "--rounds: not an integer"),
        ([], {"FORSAKEN_SERVER_FRACTION": "lots"}, None, "FORSAKEN_SERVER_FRACTION"),
        ([], {"FORSAKEN_SERVER_EVALUATE": "maybe"}, None, "not a boolean"),
        ([], {}, "bogus = 1\n", "unknown option 'bogus'"),
        ([], {}, "rounds = [\n", "not valid TOML"),
        (["--fraction", "1.5"], {}, None, "fraction must be in"),
        (["--min-clients", "2", "--min-completed", "3"], {}, None, "min_completed"),
    ],
)
def test_bad_values_name_their_source(
    tmp_path: Path, argv: list[str], env: dict[str, str], toml: str | None, message: str
) -> None:
    if toml is not None:
        path = tmp_path / "c.toml"
        path.write_text(toml)
        argv = [*argv, "--config", str(path)]
    with pytest.raises(ConfigError, match=message):
        resolve(ServerConfig, parse(argv), env=env, env_prefix=ENV_PREFIX)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(
            ServerConfig,
            parse(["--config", str(tmp_path / "nope.toml")]),
            env={},
            env_prefix=ENV_PREFIX,
        )


def test_non_loopback_listen_needs_tls_or_explicit_insecure() -> None:
    with pytest.raises(ConfigError, match=r"not a loopback address.*--insecure"):
        resolve(ServerConfig, parse(["--listen", "0.0.0.0:7070"]), env={}, env_prefix=ENV_PREFIX)
    cfg = resolve(
        ServerConfig,
        parse(["--listen", "0.0.0.0:7070", "--insecure"]),
        env={},
        env_prefix=ENV_PREFIX,
    )
    assert cfg.insecure


def test_half_configured_tls_is_an_error() -> None:
    with pytest.raises(ConfigError, match="missing tls_key, tls_ca"):
        resolve(ServerConfig, parse(["--tls-cert", "c.pem"]), env={}, env_prefix=ENV_PREFIX)


@pytest.mark.parametrize("method", [m.value for m in ForgetMethod])
def test_every_forget_method_is_a_server_default_choice(method: str) -> None:
    cfg = resolve(ServerConfig, parse(["--forget-method", method]), env={}, env_prefix=ENV_PREFIX)
    assert cfg.forget_method == method


def test_an_unknown_forget_method_is_refused_by_the_parser(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse(["--forget-method", "bogus"])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err

"""Keeps the README's configuration reference generated from the config dataclasses.

`python -m forsaken.lab.docgen` rewrites the marked sections of README.md in place; a test fails
when they are stale, so the documented flags are always the real ones.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

from forsaken.common.config import describe


def config_table(cls: type, env_prefix: str) -> str:
    rows = ["| flag | environment variable | default | meaning |", "|---|---|---|---|"]
    for flag, name, default, help_text in describe(cls):
        shown = re.sub(r"^PosixPath\('(.*)'\)$", r"'\1'", default)
        rows.append(f"| `{flag}` | `{env_prefix}_{name}` | `{shown}` | {help_text} |")
    return "\n".join(rows)


def sections() -> dict[str, str]:
    from forsaken.client.app import ENV_PREFIX as CLIENT_ENV
    from forsaken.client.app import ClientConfig
    from forsaken.server.app import ENV_PREFIX as SERVER_ENV
    from forsaken.server.app import ServerConfig

    return {
        "server-config": config_table(ServerConfig, SERVER_ENV),
        "client-config": config_table(ClientConfig, CLIENT_ENV),
    }


def render(readme: str) -> str:
    for name, body in sections().items():
        pattern = re.compile(rf"(<!-- {name}:begin -->).*?(<!-- {name}:end -->)", flags=re.DOTALL)
        if not pattern.search(readme):
            raise SystemExit(f"README has no <!-- {name}:begin/end --> markers")
        readme = pattern.sub(functools.partial(_between_markers, body), readme)
    return readme


def _between_markers(body: str, markers: re.Match[str]) -> str:
    return f"{markers.group(1)}\n{body}\n{markers.group(2)}"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("README.md")
    path.write_text(render(path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

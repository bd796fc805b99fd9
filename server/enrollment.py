"""The enrollment allow-list: which node ids may join, for federations that want a list.

Mutual TLS enrolls nodes through certificates the federation's CA issues. A plaintext
federation has no such gate, so anyone who makes a key may join; `--allow-nodes FILE` gives it
one. The file holds one node id per line (32 hex characters, as `forsaken status --wide` and
`forsaken certs` print them); blank lines and `#` comments are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

from forsaken.common.errors import ConfigError

_NODE_ID = re.compile(r"[0-9a-f]{32}")


def load_allow_list(path: str | Path) -> frozenset[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read --allow-nodes file {path}: {exc.strerror}") from None
    nodes = set()
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if not _NODE_ID.fullmatch(entry):
            raise ConfigError(
                f"{path}:{number}: {entry!r} is not a node id (32 lowercase hex characters)"
            )
        nodes.add(entry)
    if not nodes:
        raise ConfigError(f"--allow-nodes file {path} lists no node: nobody could join")
    return frozenset(nodes)

"""Client configuration: the server's address and this party's certificate paths.

A JSON file, as `sandbox init` writes one per party:
`{"address": "localhost:50443", "ca": "ca.pem", "cert": "client.pem", "key": "client.key"}`
(relative paths are relative to the file). Found via `--config`, else
$SANDBOX_CONFIG, else the only party config in the state directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import FailedPrecondition, InvalidInput


@dataclass(frozen=True)
class ClientConfig:
    address: str
    ca: Path
    cert: Path
    key: Path
    party: str = ""
    role: str = ""


def load_config(path: Path) -> ClientConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FailedPrecondition(
            f"client config {path} does not exist; `sandbox init` writes one per party"
        ) from None
    except ValueError as error:
        raise InvalidInput(f"client config {path} is not JSON: {error}") from None
    missing = [k for k in ("address", "ca", "cert", "key") if not isinstance(data.get(k), str)]
    if missing:
        raise InvalidInput(f"client config {path} lacks {', '.join(missing)}")
    base = path.parent
    return ClientConfig(
        address=data["address"],
        ca=base / data["ca"],
        cert=base / data["cert"],
        key=base / data["key"],
        party=str(data.get("party", "")),
        role=str(data.get("role", "")),
    )


def find_config(explicit: Path | None, state: Path | None = None) -> ClientConfig:
    if explicit is not None:
        return load_config(explicit)
    if env := os.environ.get("SANDBOX_CONFIG"):
        return load_config(Path(env))
    if state is not None:
        found = sorted((state / "parties").glob("*/config.json"))
        if len(found) == 1:
            return load_config(found[0])
    raise FailedPrecondition(
        "no client config: pass --config FILE or set SANDBOX_CONFIG (sandbox init writes "
        "STATE/parties/NAME/config.json)"
    )

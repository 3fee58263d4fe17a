"""Loading policies from YAML, with every violation explained.

A policy is named (`default` resolves to `policies/default.yaml`) or given as a
path. Errors list every problem at once, each naming the field, the value found
and what is allowed - an operator fixes the file in one pass.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sandbox.errors import InvalidInput, NotFound
from sandbox.policy.model import Policy

MAX_POLICY_BYTES = 256 * 1024


class PolicyInvalid(InvalidInput):
    """A policy file breaks the model; `problems` lists every violation."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(
            f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)
        )
        self.problems = problems


def policy_dirs() -> list[Path]:
    dirs = []
    if env := os.environ.get("SANDBOX_POLICY_DIR"):
        dirs.append(Path(env))
    dirs.append(Path(__file__).resolve().parents[2] / "policies")
    return dirs


def available_policies() -> list[str]:
    names = {p.stem for d in policy_dirs() if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def resolve(name_or_path: str) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml") or "/" in name_or_path:
        if not candidate.is_file():
            raise NotFound(f"policy file {name_or_path} does not exist")
        return candidate
    for directory in policy_dirs():
        path = directory / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    raise NotFound(
        f"no policy named '{name_or_path}'; available: {', '.join(available_policies()) or 'none'}"
    )


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in error["loc"]) or "(top level)"
    kind = error["type"]
    value = error.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a mapping"
    if kind == "extra_forbidden":
        return f"{field}: unknown field (check the spelling; unknown fields are never ignored)"
    if kind == "missing":
        return f"{field}: required field is missing"
    ctx = error.get("ctx") or {}
    if kind == "literal_error":
        return f"{field}: {shown} is not allowed; allowed values: {ctx.get('expected')}"
    return f"{field}: {shown} is invalid: {error['msg']}"


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise InvalidInput(f"{source}: a policy file is at most {MAX_POLICY_BYTES} bytes")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InvalidInput(f"{source}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise InvalidInput(f"{source}: a policy must be a YAML mapping of fields")
    try:
        return Policy.model_validate(data)
    except ValidationError as error:
        problems = [_describe(e) for e in error.errors(include_url=False)]  # type: ignore[arg-type]
        raise PolicyInvalid(source, problems) from None


def load_policy(name_or_path: str) -> Policy:
    path = resolve(name_or_path)
    return parse_policy(path.read_text(encoding="utf-8"), str(path))


def policy_hash(policy: Policy) -> str:
    """sha256 of the effective policy (canonical JSON), for reports and attestations."""
    return hashlib.sha256(policy.model_dump_json().encode()).hexdigest()

"""Loading an exported program that came out of the export container, safely.

model.pt2 was written in the export container, where the provider's code ran, so
its bytes are the provider's. torch.export.load is NOT safe on hostile archives
(checked on torch 2.13): weights or constants flagged `use_pickle`, legacy `.pt`
payloads, custom and opaque objects are unpickled with weights_only=False; the
sample inputs fall back to weights_only=False when the safe load fails; the
`guards_code` strings are exec'd into the guard function the module calls on
every forward; `expr_str` strings go through sympy.sympify (eval). Any of these
would run the provider's code in a trusted container, next to the training data
or the holdout. So the archive is checked with zipfile and json alone, and only an
archive in the plain form torch.export.save writes for a graph of aten ops is
loaded - by every guest that loads one (describe, evaluate, dp_train).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import torch

from sandbox.guest import protocol

MAX_JSON_BYTES = 64 * 1024 * 1024
_NAME = r"[A-Za-z0-9_]+"
_ALLOWED_ENTRIES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    rf"|models/{_NAME}\.json|data/weights/{_NAME}_weights_config\.json|data/weights/weight_\d+"
    rf"|data/constants/{_NAME}_constants_config\.json|data/constants/tensor_\d+"
    rf"|data/sample_inputs/{_NAME}\.pt)"
)
# What sympy may see: numbers, operators, symbol names (s0, u3, 'q12') and the
# constructors torch's serializer writes. No attribute access, no other strings.
_EXPR_TOKEN = re.compile(
    r"\s+|'[A-Za-z_][A-Za-z0-9_]*'|[A-Za-z_][A-Za-z0-9_]*"
    r"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|\*\*|[<>=!]=|[-+*/%(),=<>]"
)
_SYMBOL = re.compile(r"[a-z]+\d+")
_SYMPY_NAMES = frozenset(
    "Symbol Integer Rational Float Add Mul Pow Max Min Abs Mod FloorDiv CeilDiv CleanDiv "
    "ModularIndexing PythonMod Where CeilToInt FloorToInt TruncToInt TruncToFloat IntTrueDiv "
    "FloatTrueDiv PowByNatural FloatPow LShift RShift ToFloat Identity "
    "IsNonOverlappingAndDenseIndicator Eq Ne Lt Le Gt Ge And Or Not True False true false "
    "oo positive negative nonnegative nonpositive integer real finite zero nonzero".split()
)


def _safe_expr(text: str) -> bool:
    if len(text) > 4096:
        return False
    position = 0
    while position < len(text):
        match = _EXPR_TOKEN.match(text, position)
        if match is None:
            return False
        token = match.group(0)
        if (token[0].isalpha() or token[0] == "_") and not (
            token in _SYMPY_NAMES or _SYMBOL.fullmatch(token)
        ):
            return False
        position = match.end()
    return True


def _expressions(value: Any) -> Iterator[str]:
    """Every `expr_str` string in a JSON value (iteratively: no recursion limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                if key == "expr_str":
                    yield inner if isinstance(inner, str) else repr(inner)
                else:
                    stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _read_json(archive: zipfile.ZipFile, name: str) -> Any:
    if archive.getinfo(name).file_size > MAX_JSON_BYTES:
        raise ValueError(f"{name} is larger than {MAX_JSON_BYTES} bytes")
    return json.loads(archive.read(name))


def _check_payloads(config: Any, prefix: str, what: str) -> list[str]:
    problems: list[str] = []
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        return [f"the {what} configuration is malformed"]
    for name, meta in entries.items():
        path = meta.get("path_name") if isinstance(meta, dict) else None
        if not isinstance(path, str) or not re.fullmatch(prefix + r"\d+", path):
            problems.append(f"{what} {name!r} is not a plain tensor payload")
        elif meta.get("use_pickle") is not False:
            problems.append(f"{what} {name!r} is pickled; only raw tensor payloads load")
    return problems


def check_archive(path: str) -> list[str]:
    """Every reason `path` is not a plain torch.export archive (empty when it is)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            roots = {name.split("/", 1)[0] for name in names}
            if len(roots) != 1 or any("/" not in name for name in names):
                return ["model.pt2 is not a single-rooted torch.export archive"]
            root = roots.pop() + "/"
            inner = [name[len(root) :] for name in names]
            problems = [
                f"model.pt2 holds an unexpected entry {name!r}"
                for name in inner
                if not _ALLOWED_ENTRIES.fullmatch(name)
            ][:5]
            models = [n for n in inner if n.startswith("models/")]
            if len(models) != 1:
                problems.append(f"model.pt2 holds {len(models)} programs; exactly one")
            for name in inner:
                if name.endswith("_weights_config.json"):
                    problems += _check_payloads(
                        _read_json(archive, root + name), "weight_", "weight"
                    )
                elif name.endswith("_constants_config.json"):
                    config = _read_json(archive, root + name)
                    problems += _check_payloads(config, "tensor_", "constant")
                elif name.startswith("data/sample_inputs/"):
                    try:  # torch.export.load retries with weights_only=False if this fails
                        torch.load(io.BytesIO(archive.read(root + name)), weights_only=True)
                    except Exception as error:
                        problems.append(
                            f"the sample inputs do not load safely ({type(error).__name__})"
                        )
            for name in models:
                program = _read_json(archive, root + name)
                if not isinstance(program, dict):
                    problems.append("the program description is not a JSON object")
                    continue
                if program.get("guards_code"):
                    problems.append(
                        "the program carries guard code (torch.export.load executes it); "
                        "export with a dynamic batch dimension and no other shape guards"
                    )
                ranges = program.get("range_constraints")
                symbols = list(ranges) if isinstance(ranges, dict) else []
                bad = [e for e in [*_expressions(program), *symbols] if not _safe_expr(e)]
                if bad:
                    problems.append(
                        f"the program holds a shape expression sympy would eval: {bad[0][:80]!r}"
                    )
            return problems
    except (zipfile.BadZipFile, OSError, KeyError, ValueError, RecursionError) as error:
        return [f"model.pt2 is not a readable torch.export archive ({type(error).__name__})"]


def load_checked(path: str) -> torch.export.ExportedProgram:
    """torch.export.load, only after `check_archive` found nothing to refuse."""
    problems = check_archive(path)
    if problems:
        protocol.fail(
            protocol.EXIT_INVALID,
            "the exported program is not a plain torch.export archive: " + "; ".join(problems),
        )
    return torch.export.load(path)

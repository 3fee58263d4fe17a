"""Byte-exact encodings shared by the audit log and the attestations."""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

from sandbox.errors import InvalidInput, NotFound

HEX64: Final = re.compile(r"[0-9a-f]{64}")
_TIME: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_CHUNK: Final = 1 << 20


def canonical_json(value: Any) -> bytes:
    """Sorted keys, separators "," and ":", UTF-8 without \\u escapes, no NaN/Infinity."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def is_sha256_hex(value: object) -> bool:
    return isinstance(value, str) and HEX64.fullmatch(value) is not None


def utc_now() -> str:
    """Now as RFC 3339 UTC with microseconds and a `Z`, e.g. 2025-01-31T12:00:00.000000Z."""
    return format_time(datetime.now(UTC))


def format_time(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise InvalidInput("times must be timezone-aware (UTC); got a naive datetime")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def is_utc_time(value: object) -> bool:
    """RFC 3339 in UTC with a `Z` (at most microseconds), and a real date and time."""
    if not isinstance(value, str) or not _TIME.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def open_regular(path: Path, what: str = "file") -> BinaryIO:
    """Open a regular file for reading; a FIFO or device is refused, never waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist") from None
    except OSError as error:
        raise InvalidInput(f"cannot read {what} {path}: {error.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidInput(f"{what} {path} is not a regular file")
    return os.fdopen(fd, "rb")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (models can be gigabytes)."""
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()

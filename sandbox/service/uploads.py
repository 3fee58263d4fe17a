"""Receiving an upload: the declared size enforced as bytes arrive, the sha256 at the end."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sandbox.errors import InvalidInput, LimitExceeded
from sandbox.store.metadata import check_sha256


@dataclass(frozen=True)
class UploadHeader:
    name: str
    size: int
    sha256: str


def private_file(path: Path) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    return os.open(path, flags, 0o600)


def check_declared(header: UploadHeader, limit: int) -> None:
    if header.size > limit:
        raise LimitExceeded(
            f"the upload declares {header.size} bytes, over the server's limit of {limit} bytes"
        )
    check_sha256(header.sha256, "the upload's sha256")


def receive(
    header: UploadHeader,
    chunks: Iterable[bytes],
    dest: Path,
    limit: int,
    *,
    verify_sha256: bool = True,
) -> None:
    """Write the upload to `dest` (0600, new). With `verify_sha256=False` the caller
    checks the digest itself (e.g. from the pass that encrypts it: one hash fewer)."""
    check_declared(header, limit)
    digest = hashlib.sha256()
    received = 0
    fd = private_file(dest)
    with os.fdopen(fd, "wb", buffering=0) as out:
        for chunk in chunks:
            received += len(chunk)
            if received > header.size:
                raise LimitExceeded(
                    f"the upload sent more than the {header.size} bytes it declared"
                )
            if verify_sha256:
                digest.update(chunk)
            out.write(chunk)
    if received < header.size:
        raise InvalidInput(
            f"the upload stopped after {received} of the {header.size} bytes it "
            "declared (the stream was cut off); send it again"
        )
    if verify_sha256:
        check_digest(header, digest.hexdigest())


def check_digest(header: UploadHeader, actual: str) -> None:
    if actual != header.sha256:
        raise InvalidInput(
            f"the upload's content has sha256 {actual}, not the declared "
            f"{header.sha256}: it was corrupted in transit; send it again"
        )

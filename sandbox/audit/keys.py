"""The platform's Ed25519 signing key: creation, safe storage, loading, key ids.

One key signs both the audit-log checkpoints and the release attestations. The
private key is a PEM (PKCS#8, unencrypted) file of mode 0600: it is created with
O_CREAT|O_EXCL and mode 0600 (never widened by the umask, never overwriting an
existing file), and a key file that the group or others can read is refused, as
ssh refuses one. Whoever can read that file can forge attestations; keep it on the
orchestrator only.

The public key is exported as PEM (SubjectPublicKeyInfo) and published out of band:
a verifier must get it from somewhere the provider of a model cannot edit.

`key_id` is the hex sha256 of the raw 32-byte public key. It is a name, not a
credential: a verifier always checks the signature with the key it was given.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sandbox.errors import FailedPrecondition, InvalidInput, NotFound

#: Environment variable naming the signing key file (overrides the default location).
KEY_ENV: Final = "SANDBOX_SIGNING_KEY"
#: Environment variable naming the directory holding the key and the audit log.
HOME_ENV: Final = "SANDBOX_HOME"
KEY_FILENAME: Final = "signing-key.pem"
MAX_KEY_FILE_BYTES: Final = 16 * 1024


def default_home() -> Path:
    """Where the platform keeps its key and audit log: $SANDBOX_HOME, else a fixed place."""
    if env := os.environ.get(HOME_ENV):
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/sandbox")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "sandbox"


def default_key_path() -> Path:
    """$SANDBOX_SIGNING_KEY, else `signing-key.pem` in `default_home()`."""
    if env := os.environ.get(KEY_ENV):
        return Path(env)
    return default_home() / KEY_FILENAME


def generate_signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_key_of(key: Ed25519PrivateKey | Ed25519PublicKey) -> Ed25519PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else key


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Hex sha256 of the raw 32-byte public key (64 hex characters)."""
    raw = public_key_of(key).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The public key as PEM (SubjectPublicKeyInfo), the form to publish."""
    return public_key_of(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (O_EXCL, never follows or replaces anything), write, fsync."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask may have removed bits; never adds any
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def make_private_dir(directory: Path) -> None:
    """Create `directory` and missing parents as 0700 (exactly: the umask cannot narrow it)."""
    missing = []
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    for created in reversed(missing):
        with contextlib.suppress(FileExistsError):
            created.mkdir(mode=0o700)
            os.chmod(created, 0o700)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_signing_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a new private key file (PKCS#8 PEM, mode 0600); never overwrites one."""
    try:
        _write_new(path, private_key_pem(key), 0o600)
    except FileExistsError:
        raise FailedPrecondition(
            f"signing key {path} already exists; refusing to overwrite it "
            "(move it away first if you really mean to replace the platform's key)"
        ) from None
    except FileNotFoundError:
        raise NotFound(f"directory {path.parent} for the signing key does not exist") from None
    _fsync_dir(path.parent)


def save_public_key(key: Ed25519PrivateKey | Ed25519PublicKey, path: Path) -> None:
    """Write the public key as PEM (mode 0644); never overwrites a file."""
    try:
        _write_new(path, public_key_pem(key), 0o644)
    except FileExistsError:
        raise FailedPrecondition(f"{path} already exists; choose another file") from None


def _read_key_file(path: Path, *, private: bool) -> bytes:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise NotFound(f"key file {path} does not exist") from None
    except OSError as error:
        if path.is_symlink():
            raise InvalidInput(
                f"key file {path} is a symbolic link; give the file itself"
            ) from None
        raise FailedPrecondition(f"cannot open key file {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"key file {path} is not a regular file")
        if private and info.st_mode & 0o077:
            raise FailedPrecondition(
                f"private key {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); anyone who reads it can forge "
                f"attestations. Fix it with: chmod 600 {path}"
            )
        if info.st_size > MAX_KEY_FILE_BYTES:
            raise InvalidInput(f"key file {path} is {info.st_size} bytes; a PEM key is far smaller")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load a private key file: regular file, mode without group/other bits, Ed25519."""
    data = _read_key_file(path, private=True)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise InvalidInput(
            f"{path} is an encrypted private key; sandbox needs an unencrypted PKCS#8 key "
            "protected by file permissions (mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(
            f"{path} is not a PEM private key; create one with load_or_create_signing_key"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidInput(
            f"{path} holds a {type(key).__name__}; sandbox signs with Ed25519 keys only"
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Load a PEM public key (SubjectPublicKeyInfo) that must be Ed25519."""
    data = _read_key_file(path, private=False)
    if b"PRIVATE KEY" in data:
        raise InvalidInput(
            f"{path} holds a private key; give the public key (PEM 'PUBLIC KEY'), "
            "and never hand the private key to a verifier"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise InvalidInput(f"{path} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise InvalidInput(
            f"{path} holds a {type(key).__name__}; sandbox signatures use Ed25519 keys"
        )
    return key


def load_or_create_signing_key(path: Path | None = None) -> Ed25519PrivateKey:
    """Load the key at `path` (default `default_key_path()`), creating it if absent.

    Safe against concurrent callers: the key is written in full to a new 0600 file
    and hard-linked into place, which fails if another process won the race; the
    loser then loads the winner's complete key.
    """
    path = path or default_key_path()
    if path.exists() or path.is_symlink():
        return load_signing_key(path)
    make_private_dir(path.parent)
    key = generate_signing_key()
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    _write_new(tmp, private_key_pem(key), 0o600)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return load_signing_key(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)
    return key


def default_public_key() -> Ed25519PublicKey:
    """The public half of this installation's signing key, for `--key`-less verification."""
    path = default_key_path()
    if not path.exists():
        raise NotFound(
            f"no --key given and no local signing key at {path}; "
            "pass the platform's published public key with --key FILE"
        )
    return load_signing_key(path).public_key()

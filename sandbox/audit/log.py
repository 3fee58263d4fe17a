"""The audit log: append-only, hash-chained, signed at checkpoints, one JSON Lines file.

Format. Each line is one entry, exactly the canonical JSON of its value (keys
sorted, separators "," and ":", UTF-8 without escaping non-ASCII) followed by "\\n":

    seq      0, 1, 2, ... (the line's position in the chain)
    time     RFC 3339 UTC with microseconds, e.g. "2025-01-31T12:00:00.000000Z"
    kind     upload, approval, job_step, decision, download, policy_change, release,
             ... (lowercase identifier), or `checkpoint` (reserved, written by the log)
    actor    who did it (a user, a role or "orchestrator")
    subject  the ids it concerns, e.g. {"job": "...", "dataset": "..."}
    data     a small JSON object
    prev     the previous entry's `hash` (64 zeros for entry 0)
    hash     hex sha256 of the canonical JSON of the entry without `hash`

A `checkpoint` entry's data is {"key_id": ..., "sig": base64}: an Ed25519 signature
over CHECKPOINT_CONTEXT + its own `prev`, that is over the hash of the entry before
it, which by the chain commits to every entry before it. One is appended after every
`checkpoint_every` ordinary entries, and by `checkpoint()` and `close()`.

What `verify_log` detects, and what it cannot:
- any edit of any byte of an entry (content, `hash`, whitespace: a line must equal
  the canonical serialisation of its parsed value), deleted, reordered or inserted
  entries, bad or foreign checkpoint signatures, malformed or cut-off lines;
- rewriting history before the last valid checkpoint, even by someone who rewrites
  the whole chain consistently: they cannot re-sign the checkpoints;
- NOT, from the file alone: entries after the last checkpoint are only hash-chained,
  not signed, so whoever can write the file can change, drop or append them (they
  are reported as a warning, "unsigned_tail"). Removing whole lines from the end,
  down to any checkpoint, leaves a shorter log that verifies; emptying the file or
  replacing it by an unsigned one gives only a warning too. Truncation is detectable
  only against an outside record of an entry, e.g. the (seq, hash) that a release
  attestation carries or one an auditor noted: pass it as `anchor`.

The log is integrity-protected, not confidential: it is created 0600 in a 0700
directory; keep secrets and personal data out of `data` (log sha256s instead).

Writers in several processes are serialised by fcntl.flock on the log file; each
append is one write of whole lines, then fsync, under the lock. A writer re-reads
whatever other processes appended since its last write, so `seq`, `prev` and the
checkpoint count stay right across processes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from sandbox.audit.encoding import HEX64, canonical_json, is_utc_time, open_regular, utc_now
from sandbox.audit.keys import default_home, key_id, make_private_dir
from sandbox.errors import FailedPrecondition, InvalidInput

GENESIS: Final = "0" * 64
CHECKPOINT: Final = "checkpoint"
#: Suggested kinds; any lowercase identifier is accepted, `checkpoint` is reserved.
KINDS: Final = (
    "upload",
    "approval",
    "job_step",
    "decision",
    "download",
    "policy_change",
    "release",
)
CHECKPOINT_CONTEXT: Final = b"sandbox.audit.checkpoint.v1 "
DEFAULT_CHECKPOINT_EVERY: Final = 100
#: The longest line (entry plus newline) a writer produces or a verifier accepts.
MAX_ENTRY_BYTES: Final = 64 * 1024
#: A verifier lists at most this many errors (and counts the rest).
MAX_REPORTED: Final = 200
LOG_FILENAME: Final = "audit.jsonl"

FIELDS: Final = frozenset({"seq", "time", "kind", "actor", "subject", "data", "prev", "hash"})
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")
_SUBJECT_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_TEXT = 256
_READ_CHUNK = 1 << 20


def default_log_path() -> Path:
    return default_home() / LOG_FILENAME


def entry_hash(entry: Mapping[str, Any]) -> str:
    """Hex sha256 of the canonical JSON of `entry` without its `hash` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def checkpoint_message(prev: str) -> bytes:
    """The bytes a checkpoint signs: a context string and the hash of the entry before."""
    return CHECKPOINT_CONTEXT + prev.encode("ascii")


@dataclass(frozen=True)
class Entry:
    seq: int
    time: str
    kind: str
    actor: str
    subject: dict[str, str]
    data: dict[str, Any]
    prev: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LogHead:
    """The position of one entry: enough to pin a log's state from outside."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> LogHead:
        """Parse `SEQ:HASH` (as printed by `str()`)."""
        seq, _, digest = text.partition(":")
        if not seq.isdigit() or not HEX64.fullmatch(digest):
            raise InvalidInput(f"anchor {text!r} must be SEQ:HASH (a number, ':', 64 hex digits)")
        return cls(int(seq), digest)


# ----------------------------------------------------------------------------- writing


@dataclass
class _ChainState:
    offset: int = 0
    seq: int = -1
    hash: str = GENESIS
    since_checkpoint: int = 0
    lines: int = 0


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise InvalidInput(f"audit {name} must be a non-empty string of at most {_MAX_TEXT} chars")
    return value


class AuditLog:
    """An append-only audit log file; safe to use from several processes at once.

    Use as a context manager, or call `close()`: it appends a final checkpoint so
    the whole log is signed.
    """

    def __init__(
        self,
        path: Path,
        signing_key: Ed25519PrivateKey,
        *,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise InvalidInput(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        self.path = path
        self.checkpoint_every = checkpoint_every
        self._key = signing_key
        self._key_id = key_id(signing_key)
        self._state = _ChainState()
        self._thread_lock = threading.Lock()
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        make_private_dir(path.parent)
        try:
            self._fd: int | None = os.open(path, flags, 0o600)
        except OSError as error:
            why = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror
            raise FailedPrecondition(
                f"cannot open audit log {path}: {why}; it must be a regular file"
            ) from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(self._fd)
            self._fd = None
            raise FailedPrecondition(f"audit log {path} is not a regular file")
        self._ino = info.st_ino
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # the file's name is durable too
        finally:
            os.close(dir_fd)

    # -- public API

    def append(
        self,
        kind: str,
        *,
        actor: str,
        subject: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Append one entry (and a checkpoint when one is due); durable on return."""
        if not isinstance(kind, str) or not _KIND.fullmatch(kind) or kind == CHECKPOINT:
            raise InvalidInput(
                f"audit kind {kind!r} must be a lowercase identifier (e.g. {', '.join(KINDS)}); "
                "'checkpoint' is reserved for the log itself"
            )
        _check_text("actor", actor)
        if not isinstance(subject or {}, Mapping) or not isinstance(data or {}, Mapping):
            raise InvalidInput("audit subject and data must be JSON objects (mappings)")
        subject_dict = dict(subject or {})
        for name, value in subject_dict.items():
            if not isinstance(name, str) or not _SUBJECT_KEY.fullmatch(name):
                raise InvalidInput(f"audit subject key {name!r} must be a lowercase identifier")
            _check_text(f"subject {name}", value)
        data_dict = dict(data or {})
        with self._locked() as state:
            entry = self._make(state, kind, actor, subject_dict, data_dict)
            entries = [entry]
            if state.since_checkpoint >= self.checkpoint_every:
                entries.append(self._make_checkpoint(entry.seq, entry.hash))
            self._write(state, entries)
        return entry

    def checkpoint(self) -> Entry | None:
        """Sign everything so far; nothing to do (None) if the log is empty or just signed."""
        with self._locked() as state:
            if state.seq < 0 or state.since_checkpoint == 0:
                return None
            entry = self._make_checkpoint(state.seq, state.hash)
            self._write(state, [entry])
            return entry

    def head(self) -> LogHead | None:
        """The last entry now in the file (None when empty)."""
        with self._locked() as state:
            return LogHead(state.seq, state.hash) if state.seq >= 0 else None

    def close(self) -> None:
        """Append a final checkpoint (if anything is unsigned) and close the file."""
        if self._fd is None:
            return
        try:
            self.checkpoint()
        finally:
            with self._thread_lock:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None

    def __del__(self) -> None:
        # Dropped without close(): release the descriptor. Signing is close()'s job, and
        # the next writer's checkpoint covers whatever this one left unsigned.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals

    def _make(
        self, state: _ChainState, kind: str, actor: str, subject: dict[str, str], data: Any
    ) -> Entry:
        body: dict[str, Any] = {
            "seq": state.seq + 1,
            "time": utc_now(),
            "kind": kind,
            "actor": actor,
            "subject": subject,
            "data": data,
            "prev": state.hash,
        }
        try:
            encoded = canonical_json(body)
            parsed = json.loads(encoded)  # normalised: what a reader will see
        except (TypeError, ValueError) as error:
            raise InvalidInput(
                f"audit data must be a JSON object of strings, numbers, booleans, null, "
                f"lists and objects with string keys (no NaN/Infinity): {error}"
            ) from None
        if canonical_json(parsed) != encoded:  # pragma: no cover - json round-trips
            raise InvalidInput("audit data does not survive a JSON round trip")
        parsed["hash"] = hashlib.sha256(encoded).hexdigest()
        if len(canonical_json(parsed)) + 1 > MAX_ENTRY_BYTES:
            raise InvalidInput(
                f"audit entry is over {MAX_ENTRY_BYTES} bytes; keep data small and log "
                "large artefacts by their sha256"
            )
        entry = Entry(**parsed)
        state.seq, state.hash = entry.seq, entry.hash
        state.since_checkpoint += 1
        return entry

    def _make_checkpoint(self, seq: int, prev: str) -> Entry:
        sig = self._key.sign(checkpoint_message(prev))
        body: dict[str, Any] = {
            "seq": seq + 1,
            "time": utc_now(),
            "kind": CHECKPOINT,
            "actor": "audit",
            "subject": {},
            "data": {"key_id": self._key_id, "sig": base64.b64encode(sig).decode("ascii")},
            "prev": prev,
        }
        body["hash"] = entry_hash(body)
        entry = Entry(**body)
        self._state.seq, self._state.hash = entry.seq, entry.hash
        self._state.since_checkpoint = 0
        return entry

    def _write(self, state: _ChainState, entries: list[Entry]) -> None:
        assert self._fd is not None
        blob = b"".join(canonical_json(e.to_dict()) + b"\n" for e in entries)
        start = state.offset
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as error:
            # Never leave half a line behind: cut the file back to where we began. If
            # that fails too, the next append finds the incomplete line and refuses.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
                os.fsync(self._fd)
            self._state = _ChainState()  # re-read everything on the next append
            raise FailedPrecondition(
                f"cannot write to audit log {self.path}: {error.strerror}; the entry was "
                "not recorded (free disk space or fix permissions, then retry)"
            ) from None
        state.offset = start + len(blob)
        state.lines += len(entries)

    @contextmanager
    def _locked(self) -> Iterator[_ChainState]:
        """Hold the thread lock and the file lock, with the chain state caught up."""
        with self._thread_lock:
            fd = self._fd
            if fd is None:
                raise FailedPrecondition(f"audit log {self.path} is closed")
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._refresh()
                yield self._state
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _refresh(self) -> None:
        """Catch up with lines other processes appended since our last look (under lock)."""
        assert self._fd is not None
        try:
            current = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != self._ino:
            raise FailedPrecondition(
                f"audit log {self.path} was removed or replaced while open; "
                "an audit log is append-only: restore it and restart"
            )
        size = os.fstat(self._fd).st_size
        state = self._state
        if size < state.offset:
            raise FailedPrecondition(
                f"audit log {self.path} shrank from {state.offset} to {size} bytes while open "
                "(truncated?); run `sandbox audit verify` before writing to it again"
            )
        if size == state.offset:
            return
        for line_no, raw in _read_lines(self._fd, state.offset, size, state.lines):
            if not raw.endswith(b"\n"):
                raise FailedPrecondition(
                    f"audit log {self.path} ends with an incomplete line {line_no} (a crash "
                    "during a write, or a cut file); run `sandbox audit verify` and repair "
                    "the file before appending"
                )
            self._absorb(line_no, raw)
            state.offset += len(raw)
            state.lines = line_no

    def _absorb(self, line_no: int, raw: bytes) -> None:
        state = self._state
        try:
            value = json.loads(raw)
            seq, digest, prev, kind = value["seq"], value["hash"], value["prev"], value["kind"]
        except (ValueError, TypeError, KeyError):
            raise FailedPrecondition(
                f"audit log {self.path} line {line_no} is not an audit entry; run "
                "`sandbox audit verify` and repair the file before appending"
            ) from None
        if seq != state.seq + 1 or prev != state.hash or not isinstance(digest, str):
            raise FailedPrecondition(
                f"audit log {self.path} line {line_no} breaks the chain (seq {seq!r}, "
                f"expected {state.seq + 1}); run `sandbox audit verify` before appending"
            )
        state.seq, state.hash = seq, digest
        state.since_checkpoint = 0 if kind == CHECKPOINT else state.since_checkpoint + 1


def _read_lines(fd: int, start: int, end: int, lines_before: int) -> Iterator[tuple[int, bytes]]:
    """Lines of bytes [start, end) of `fd`, each with its newline (the last may lack it)."""
    pending = b""
    position = start
    line_no = lines_before
    while position < end:
        chunk = os.pread(fd, min(_READ_CHUNK, end - position), position)
        if not chunk:
            break
        position += len(chunk)
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line_no += 1
            yield line_no, raw + b"\n"
    if pending:
        yield line_no + 1, pending


# --------------------------------------------------------------------------- verifying


@dataclass(frozen=True)
class Problem:
    """One finding: where (line, and the entry's seq when known), what kind, and why."""

    line: int
    seq: int | None
    code: str
    message: str


@dataclass
class VerifyResult:
    path: str
    lines: int = 0
    entries: int = 0
    checkpoints: int = 0
    signed_through: int | None = None
    head: LogHead | None = None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    errors_not_listed: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and not self.errors_not_listed

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "ok": self.ok,
            "lines": self.lines,
            "entries": self.entries,
            "checkpoints": self.checkpoints,
            "signed_through": self.signed_through,
            "head": None if self.head is None else {"seq": self.head.seq, "hash": self.head.hash},
            "errors": [asdict(p) for p in self.errors],
            "errors_not_listed": self.errors_not_listed,
            "warnings": [asdict(p) for p in self.warnings],
        }

    def summary(self) -> str:
        verdict = "valid" if self.ok else f"INVALID ({len(self.errors) + self.errors_not_listed})"
        signed = (
            f"signed through entry {self.signed_through}"
            if self.signed_through is not None
            else "nothing signed"
        )
        lines = [
            f"{self.path}: {verdict}; {self.entries} entries, "
            f"{self.checkpoints} valid checkpoint(s), {signed}"
        ]
        lines += [f"  error: {p.message}" for p in self.errors]
        if self.errors_not_listed:
            lines.append(f"  ... and {self.errors_not_listed} more error(s)")
        lines += [f"  warning: {p.message}" for p in self.warnings]
        return "\n".join(lines)


@dataclass
class _Previous:
    seq: int
    hash: str
    line: int


class _Verifier:
    def __init__(self, path: str, public_key: Ed25519PublicKey, anchor: LogHead | None) -> None:
        self.result = VerifyResult(path=path)
        self.key = public_key
        self.key_id = key_id(public_key)
        self.anchor = anchor
        self.previous: _Previous | None = None
        self.chain_known = True  # False after a line we could not read
        self.hashes: dict[int, tuple[int, str]] = {}  # only the anchor's, to stay small
        self.last_checkpoint_line = 0

    def error(self, line: int, seq: int | None, code: str, message: str) -> None:
        if len(self.result.errors) < MAX_REPORTED:
            self.result.errors.append(Problem(line, seq, code, message))
        else:
            self.result.errors_not_listed += 1

    def warn(self, line: int, seq: int | None, code: str, message: str) -> None:
        self.result.warnings.append(Problem(line, seq, code, message))

    def unreadable(self, line: int, code: str, message: str) -> None:
        self.error(line, None, code, f"line {line}: {message}")
        self.chain_known = False

    def line(self, line: int, raw: bytes, complete: bool) -> None:
        self.result.lines = line
        if not complete:
            self.unreadable(
                line,
                "incomplete",
                "incomplete last line (no newline at the end): the file was cut mid-entry "
                "or a write was interrupted",
            )
            return
        if not raw:
            self.unreadable(line, "empty", "empty line (an entry was blanked out?)")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            self.unreadable(line, "malformed", f"not valid UTF-8 (byte {err.start + 1})")
            return
        try:
            value = json.loads(text)
        except ValueError as err:
            self.unreadable(line, "malformed", f"not valid JSON ({err})")
            return
        problems = _schema_problems(value)
        if problems:
            self.unreadable(line, "malformed", "not an audit entry: " + "; ".join(problems))
            return
        self.entry(line, raw, value)

    def entry(self, line: int, raw: bytes, value: dict[str, Any]) -> None:
        seq: int = value["seq"]
        where = f"entry {seq} (line {line})"
        self.result.entries += 1
        try:
            canonical = canonical_json(value)
        except (ValueError, UnicodeEncodeError):
            canonical = b""
        if raw != canonical:
            self.error(
                line,
                seq,
                "not_canonical",
                f"{where}: not in canonical form (whitespace, key order, number or escape "
                "spelling changed); each line must be exactly the canonical JSON of its entry",
            )
        if entry_hash(value) != value["hash"]:
            self.error(line, seq, "hash", f"{where}: hash does not match its contents (edited?)")
        self.link(line, seq, value, where)
        if value["kind"] == CHECKPOINT:
            self.checkpoint(line, seq, value)
        self.previous = _Previous(seq, value["hash"], line)
        self.chain_known = True
        if self.anchor is not None and seq == self.anchor.seq:
            self.hashes[seq] = (line, value["hash"])

    def link(self, line: int, seq: int, value: dict[str, Any], where: str) -> None:
        prev = self.previous
        if prev is None and self.chain_known:  # the first line
            if seq != 0:
                self.error(
                    line, seq, "seq", f"{where}: seq {seq} expected 0 (entries before it deleted?)"
                )
            if value["prev"] != GENESIS:
                self.error(
                    line,
                    seq,
                    "prev",
                    f"{where}: prev is not 64 zeros, so it is not the first entry "
                    "(the start of the log was deleted?)",
                )
            return
        if prev is None or not self.chain_known:
            return  # the line before was unreadable: already reported
        expected = prev.seq + 1
        if seq != expected:
            if seq == expected + 1:
                why = f"entry {expected} deleted?"
            elif seq > expected:
                why = f"entries {expected}..{seq - 1} deleted?"
            else:
                why = "entries reordered, duplicated or inserted?"
            self.error(line, seq, "seq", f"{where}: seq {seq} expected {expected} ({why})")
        if value["prev"] != prev.hash:
            self.error(
                line,
                seq,
                "prev",
                f"{where}: prev does not match entry {prev.seq}'s hash (line {prev.line}) "
                "(deleted, reordered or inserted?)",
            )

    def checkpoint(self, line: int, seq: int, value: dict[str, Any]) -> None:
        data = value["data"]
        where = f"checkpoint at entry {seq} (line {line})"
        if data["key_id"] != self.key_id:
            self.error(
                line,
                seq,
                "signature",
                f"{where}: signed by key {data['key_id']}, not by the given key {self.key_id} "
                "(wrong --key, or a forged checkpoint)",
            )
            return
        try:
            self.key.verify(
                base64.b64decode(data["sig"], validate=True), checkpoint_message(value["prev"])
            )
        except (InvalidSignature, binascii.Error, ValueError):
            self.error(
                line,
                seq,
                "signature",
                f"{where}: signature invalid (the checkpoint or the entries before it were "
                "altered)",
            )
            return
        self.result.checkpoints += 1
        self.result.signed_through = seq
        self.last_checkpoint_line = line

    def finish(self) -> VerifyResult:
        result = self.result
        if self.previous is not None:
            result.head = LogHead(self.previous.seq, self.previous.hash)
        if result.lines == 0:
            self.warn(0, None, "empty", "the log is empty (nothing to verify; truncated?)")
        elif result.signed_through is None:
            self.warn(
                1,
                None,
                "unsigned",
                "no valid checkpoint: nothing in this log is signed, so anyone who can write "
                "the file could have rewritten all of it",
            )
        elif result.lines > self.last_checkpoint_line:
            first = self.last_checkpoint_line + 1
            self.warn(
                first,
                None,
                "unsigned_tail",
                f"lines {first}..{result.lines} come after the last checkpoint "
                f"(entry {result.signed_through}) and are not signed: a change to them or "
                "a truncation of them cannot be detected (the log was not closed, or its "
                "last checkpoint was removed)",
            )
        if self.anchor is not None:
            self.check_anchor(self.anchor)
        return result

    def check_anchor(self, anchor: LogHead) -> None:
        found = self.hashes.get(anchor.seq)
        if found is None:
            last = self.result.head.seq if self.result.head else None
            self.error(
                self.result.lines,
                anchor.seq,
                "truncated",
                f"the anchor names entry {anchor.seq} but the log ends at entry {last}: "
                "entries were removed from the end (truncated)",
            )
        elif found[1] != anchor.hash:
            self.error(
                found[0],
                anchor.seq,
                "anchor",
                f"entry {anchor.seq} (line {found[0]}): hash differs from the anchor's "
                "(the log was rewritten)",
            )


def _schema_problems(value: object) -> list[str]:
    """Every way `value` is not an entry (empty when it has the right fields and types)."""
    if not isinstance(value, dict):
        return [f"a JSON object is required, found {type(value).__name__}"]
    problems = []
    missing = sorted(FIELDS - value.keys())
    extra = sorted(value.keys() - FIELDS)
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
    seq = value.get("seq")
    if "seq" in value and (type(seq) is not int or seq < 0):
        problems.append(f"seq must be a non-negative integer, found {seq!r}")
    for name in ("prev", "hash"):
        digest = value.get(name)
        if name in value and not (isinstance(digest, str) and HEX64.fullmatch(digest)):
            problems.append(f"{name} must be 64 lowercase hex digits")
    when = value.get("time")
    if "time" in value and not (is_utc_time(when)):
        problems.append(f"time must be RFC 3339 UTC ending in Z, found {when!r}")
    kind = value.get("kind")
    if "kind" in value and not (isinstance(kind, str) and _KIND.fullmatch(kind)):
        problems.append(f"kind must be a lowercase identifier, found {kind!r}")
    actor = value.get("actor")
    if "actor" in value and not (isinstance(actor, str) and actor):
        problems.append("actor must be a non-empty string")
    subject = value.get("subject")
    if "subject" in value and not (
        isinstance(subject, dict) and all(isinstance(v, str) for v in subject.values())
    ):
        problems.append("subject must be an object of strings")
    data = value.get("data")
    if "data" in value and not isinstance(data, dict):
        problems.append("data must be an object")
    if (
        kind == CHECKPOINT
        and isinstance(data, dict)
        and (set(data) != {"key_id", "sig"} or not all(isinstance(v, str) for v in data.values()))
    ):
        problems.append("checkpoint data must be {key_id, sig} strings")
    return problems


def verify_log(
    path: Path, public_key: Ed25519PublicKey, *, anchor: LogHead | None = None
) -> VerifyResult:
    """Check every line of the log at `path`; never raises for bad content.

    `anchor` is an outside record of one entry (seq and hash), such as the audit
    head in a release attestation: the log must still contain it, unchanged.
    """
    verifier = _Verifier(str(path), public_key, anchor)
    with open_regular(path, "audit log") as handle:
        line = 0
        while True:
            raw = handle.readline(MAX_ENTRY_BYTES + 1)
            if not raw:
                break
            line += 1
            if len(raw) > MAX_ENTRY_BYTES:
                while raw and not raw.endswith(b"\n"):  # skip the rest of an overlong line
                    raw = handle.readline(_READ_CHUNK)
                verifier.result.lines = line
                verifier.unreadable(line, "too_long", f"longer than {MAX_ENTRY_BYTES} bytes")
                continue
            complete = raw.endswith(b"\n")
            verifier.line(line, raw[:-1] if complete else raw, complete)
    return verifier.finish()

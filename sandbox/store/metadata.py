"""Metadata: typed records, the `MetadataStore` contract, and the rules both backends share.

Two backends implement the contract: `SqliteMetadataStore` (the real one) and
`InMemoryMetadataStore` (a fake for unit tests of the layers above). One contract
test suite runs against both, and every rule that decides an outcome - validation,
the job state machine, approvals, release preconditions, page tokens - lives here
as a plain function both call, so they cannot drift apart.

Job states advance only along `TRANSITIONS`, with compare-and-set semantics:
`transition(job_id, from_state, to_state)` fails unless the job is in `from_state`
at that instant, so of two workers racing to advance a job exactly one wins. A job
that needs the data owner's approval cannot leave `queued` before it is approved.
A release row is unique per job: a model is released at most once.

Authorisation (who may read or change what) is not the store's job; the API layer
checks roles. The store enforces integrity: references exist, values are well
formed, states move legally.

Lists are keyset-paginated on (created, id) - (name) for parties - with an opaque
page token: a base64url JSON position, not an offset, so pages stay correct while
rows are inserted. Tokens are not secret and not signed: a forged token can only
name another position in a listing the caller may already read.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final, Generic, Protocol, TypeVar

from sandbox.errors import FailedPrecondition, InvalidInput, LimitExceeded

T = TypeVar("T")

DEFAULT_PAGE_SIZE: Final = 50
MAX_PAGE_SIZE: Final = 500
MAX_TEXT: Final = 200
MAX_DETAIL: Final = 2000
MAX_REASONS: Final = 100
MAX_SHAPE_DIMS: Final = 8


class Role(StrEnum):
    DATA_OWNER = "data_owner"
    PROVIDER = "provider"
    OPERATOR = "operator"
    SECURITY = "security"


class JobState(StrEnum):
    QUEUED = "queued"
    ARCHITECTURE = "architecture"
    TRAIN = "train"
    GATE = "gate"
    CHECKS = "checks"
    DP_RETRAIN = "dp_retrain"
    DECIDE = "decide"
    RELEASE = "release"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Decision(StrEnum):
    RELEASED = "released"
    RELEASED_SANITIZED = "released_sanitized"
    RELEASED_DP = "released_dp"
    REJECTED = "rejected"


class ApprovalState(StrEnum):
    NOT_REQUIRED = "not_required"
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"


_S = JobState
TERMINAL: Final = frozenset({_S.DONE, _S.FAILED, _S.CANCELLED})
_ABORT: Final = frozenset({_S.FAILED, _S.CANCELLED})
_FORWARD: Final = {
    _S.QUEUED: {_S.ARCHITECTURE},
    _S.ARCHITECTURE: {_S.TRAIN, _S.DECIDE},
    _S.TRAIN: {_S.GATE, _S.DECIDE},
    _S.GATE: {_S.CHECKS, _S.DECIDE},
    _S.CHECKS: {_S.DP_RETRAIN, _S.DECIDE},
    _S.DP_RETRAIN: {_S.DECIDE},
    _S.DECIDE: {_S.RELEASE, _S.DONE},
    _S.RELEASE: {_S.DONE},
}
#: Every legal move. Any step may go straight to `decide` (an early rejection, e.g. a
#: custom op in the graph); `decide` goes to `release` or, for `rejected`, to `done`;
#: every non-terminal state may go to `failed` or `cancelled`; terminal states stay.
TRANSITIONS: Final[Mapping[JobState, frozenset[JobState]]] = MappingProxyType(
    {
        state: frozenset(_FORWARD[state]) | _ABORT if state not in TERMINAL else frozenset()
        for state in JobState
    }
)
RELEASING: Final = frozenset({Decision.RELEASED, Decision.RELEASED_SANITIZED, Decision.RELEASED_DP})


@dataclass(frozen=True)
class Party:
    name: str
    role: Role
    created: float


@dataclass(frozen=True)
class Dataset:
    id: str
    owner: str
    name: str
    blob_sha256: str  # of the encrypted file in the blob store
    plaintext_sha256: str
    size: int  # plaintext bytes
    num_classes: int
    input_shape: tuple[int, ...]
    created: float


@dataclass(frozen=True)
class Algorithm:
    id: str
    provider: str
    name: str
    version: str
    blob_sha256: str
    created: float


@dataclass(frozen=True)
class StateChange:
    from_state: JobState | None  # None for the job's creation
    to_state: JobState
    at: float
    detail: str


@dataclass(frozen=True)
class Approval:
    state: ApprovalState
    by: str | None = None
    at: float | None = None


@dataclass(frozen=True)
class Job:
    id: str
    dataset_id: str
    algorithm_id: str
    submitter: str
    policy_name: str
    policy_sha256: str
    state: JobState
    history: tuple[StateChange, ...]
    decision: Decision | None
    reasons: tuple[str, ...]
    approval: Approval
    created: float
    updated: float


@dataclass(frozen=True)
class Release:
    job_id: str
    model_sha256: str
    released_at: float


@dataclass(frozen=True)
class Page(Generic[T]):
    items: tuple[T, ...]
    next_page_token: str | None  # None: this was the last page


class MetadataStore(Protocol):
    """What the server needs from metadata storage. All methods are thread-safe."""

    def add_party(self, name: str, role: Role) -> Party: ...
    def get_party(self, name: str) -> Party: ...
    def list_parties(
        self,
        *,
        role: Role | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Party]: ...

    def add_dataset(
        self,
        *,
        id: str,
        owner: str,
        name: str,
        blob_sha256: str,
        plaintext_sha256: str,
        size: int,
        num_classes: int,
        input_shape: Sequence[int],
    ) -> Dataset: ...
    def get_dataset(self, dataset_id: str) -> Dataset: ...
    def list_datasets(
        self,
        *,
        owner: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Dataset]: ...

    def add_algorithm(
        self, *, id: str, provider: str, name: str, version: str, blob_sha256: str
    ) -> Algorithm: ...
    def get_algorithm(self, algorithm_id: str) -> Algorithm: ...
    def list_algorithms(
        self,
        *,
        provider: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Algorithm]: ...

    def create_job(
        self,
        *,
        id: str,
        dataset_id: str,
        algorithm_id: str,
        submitter: str,
        policy_name: str,
        policy_sha256: str,
        approval_required: bool,
    ) -> Job: ...
    def get_job(self, job_id: str) -> Job: ...
    def list_jobs(
        self,
        *,
        dataset_id: str | None = None,
        algorithm_id: str | None = None,
        submitter: str | None = None,
        dataset_owner: str | None = None,
        algorithm_provider: str | None = None,
        states: Collection[JobState] | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str | None = None,
    ) -> Page[Job]: ...
    def record_approval(self, job_id: str, *, by: str, approved: bool) -> Job: ...
    def transition(
        self,
        job_id: str,
        from_state: JobState,
        to_state: JobState,
        *,
        detail: str = "",
        decision: Decision | None = None,
        reasons: Sequence[str] = (),
    ) -> Job: ...

    def preapprove(self, dataset_id: str, algorithm_id: str, *, by: str) -> None:
        """Record that `by` approves every job of `algorithm_id` on `dataset_id` (idempotent)."""
        ...

    def is_preapproved(self, dataset_id: str, algorithm_id: str) -> bool: ...

    def record_release(self, job_id: str, *, model_sha256: str) -> Release: ...
    def get_release(self, job_id: str) -> Release: ...

    def charge_quota(
        self, party: str, counter: str, period: str, *, amount: int, limit: int
    ) -> int: ...
    def quota_usage(self, party: str, counter: str, period: str) -> int: ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- validation

_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEY: Final = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")


def new_id(prefix: str) -> str:
    """A random id such as `ds_3f9c...` (96 random bits): unguessable and collision-free."""
    return f"{prefix}_{secrets.token_hex(12)}"


def check_party_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"party name {name!r} is invalid: use 1-128 letters, digits, '.', '_', '@' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise InvalidInput(
            f"{what} {value!r} is invalid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (new_id() makes one)"
        )
    return value


def check_text(value: str, what: str, limit: int = MAX_TEXT, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty) or len(value) > limit:
        raise InvalidInput(f"{what} must be a string of {0 if empty else 1}-{limit} characters")
    if any(not ch.isprintable() for ch in value):
        raise InvalidInput(f"{what} {value!r} contains control characters; remove them")
    return value


def check_sha256(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInput(f"{what} {value!r} is not a sha256: give 64 lowercase hex digits")
    return value


def check_key(value: str, what: str) -> str:
    if not isinstance(value, str) or not _KEY.fullmatch(value):
        raise InvalidInput(
            f"{what} {value!r} is invalid: use 1-64 lowercase letters, digits, '_', '.', ':' "
            "or '-'"
        )
    return value


def check_role(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidInput(f"role {role!r} is not one of: {allowed}") from None


def check_state(state: JobState | str, what: str = "state") -> JobState:
    try:
        return JobState(state)
    except ValueError:
        allowed = ", ".join(s.value for s in JobState)
        raise InvalidInput(f"{what} {state!r} is not one of: {allowed}") from None


def check_dataset_fields(
    name: str,
    blob_sha256: str,
    plaintext_sha256: str,
    size: int,
    num_classes: int,
    input_shape: Sequence[int],
) -> tuple[int, ...]:
    """Validate a dataset's descriptive fields; return the shape as a tuple."""
    check_text(name, "dataset name")
    check_sha256(blob_sha256, "dataset blob_sha256")
    check_sha256(plaintext_sha256, "dataset plaintext_sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidInput(f"dataset size must be an integer >= 0, got {size!r}")
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 2:
        raise InvalidInput(f"num_classes must be an integer >= 2, got {num_classes!r}")
    shape = tuple(input_shape)
    if not 1 <= len(shape) <= MAX_SHAPE_DIMS or any(
        not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in shape
    ):
        raise InvalidInput(
            f"input_shape {shape!r} is invalid: give 1-{MAX_SHAPE_DIMS} positive integers "
            "(one example's shape, without the batch dimension)"
        )
    return shape


def check_page_size(page_size: int) -> int:
    if not isinstance(page_size, int) or not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidInput(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size!r}")
    return page_size


def check_reasons(reasons: Sequence[str]) -> tuple[str, ...]:
    if isinstance(reasons, str):
        raise InvalidInput("reasons must be a list of strings, not one string")
    result = tuple(reasons)
    if len(result) > MAX_REASONS:
        raise InvalidInput(f"at most {MAX_REASONS} reasons, got {len(result)}; summarise them")
    for reason in result:
        check_text(reason, "a reason", MAX_DETAIL)
    return result


# ---------------------------------------------------------------- job rules


def check_transition_request(
    from_state: JobState | str,
    to_state: JobState | str,
    decision: Decision | str | None,
    reasons: Sequence[str],
    detail: str,
) -> tuple[JobState, JobState, Decision | None, tuple[str, ...]]:
    """Validate a transition independently of the job's current state."""
    source = check_state(from_state, "from_state")
    target = check_state(to_state, "to_state")
    check_text(detail, "transition detail", MAX_DETAIL, empty=True)
    if target not in TRANSITIONS[source]:
        allowed = ", ".join(sorted(TRANSITIONS[source])) or "nothing (it is terminal)"
        raise FailedPrecondition(
            f"a job cannot move from {source} to {target}; from {source} it may move to: "
            f"{allowed}"
        )
    verdict: Decision | None = None
    if decision is not None:
        try:
            verdict = Decision(decision)
        except ValueError:
            allowed = ", ".join(d.value for d in Decision)
            raise InvalidInput(f"decision {decision!r} is not one of: {allowed}") from None
    leaving_decide = source is _S.DECIDE and target in (_S.RELEASE, _S.DONE)
    if leaving_decide and verdict is None:
        raise InvalidInput(f"leaving decide for {target} needs the decision (and its reasons)")
    if verdict is not None and not leaving_decide:
        raise InvalidInput(
            f"a decision is recorded only when leaving decide for release or done, not on "
            f"{source} -> {target}"
        )
    if target is _S.RELEASE and verdict not in RELEASING:
        raise InvalidInput(f"decision {verdict} does not release a model: move to done instead")
    if source is _S.DECIDE and target is _S.DONE and verdict is not Decision.REJECTED:
        raise InvalidInput(f"decision {verdict} releases a model: move to release, not done")
    checked = check_reasons(reasons)
    if checked and verdict is None and target not in (_S.FAILED, _S.CANCELLED):
        raise InvalidInput("reasons go with a decision or with a move to failed or cancelled")
    return source, target, verdict, checked


def check_transition_against(job: Job, from_state: JobState, to_state: JobState) -> None:
    """The compare-and-set test: the job must be in `from_state` right now."""
    if job.state is not from_state:
        raise FailedPrecondition(
            f"job {job.id} is in state {job.state}, not {from_state}: another worker moved it "
            "first, or it was cancelled; re-read the job before acting on it"
        )
    if (
        from_state is _S.QUEUED
        and to_state is _S.ARCHITECTURE
        and job.approval.state not in (ApprovalState.APPROVED, ApprovalState.NOT_REQUIRED)
    ):
        raise FailedPrecondition(
            f"job {job.id} cannot start: the data owner's approval is {job.approval.state}; "
            "it starts once the data owner approves it"
        )


def check_approval_against(job: Job) -> None:
    if job.approval.state is not ApprovalState.PENDING:
        raise FailedPrecondition(
            f"job {job.id} is not awaiting approval (approval is {job.approval.state}); "
            "an approval is given once"
        )
    if job.state in TERMINAL:
        raise FailedPrecondition(f"job {job.id} is already {job.state}; nothing to approve")


def check_release_against(job: Job, existing: Release | None) -> None:
    if existing is not None:
        raise FailedPrecondition(
            f"job {job.id} was already released at {existing.released_at} (model "
            f"{existing.model_sha256}); a job releases at most once"
        )
    if job.state is not _S.RELEASE:
        raise FailedPrecondition(
            f"job {job.id} is in state {job.state}; a release is recorded only in state release"
        )


def check_quota_request(party: str, counter: str, period: str, amount: int, limit: int) -> None:
    check_party_name(party)
    check_key(counter, "quota counter")
    check_key(period, "quota period")
    if not isinstance(amount, int) or isinstance(amount, bool) or amount < 1:
        raise InvalidInput(f"quota amount must be an integer >= 1, got {amount!r}")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise InvalidInput(f"quota limit must be an integer >= 0, got {limit!r}")


def quota_exceeded(
    party: str, counter: str, period: str, used: int, amount: int, limit: int
) -> LimitExceeded:
    return LimitExceeded(
        f"quota {counter} of {party} for {period} is exhausted: {used} of {limit} used, "
        f"{amount} more requested; wait for the next period or ask the operator for more"
    )


# ---------------------------------------------------------------- page tokens

Position = tuple[float, str] | tuple[str]  # (created, id) or (name,) for parties, policies


def encode_page_token(listing: str, position: Position) -> str:
    raw = json.dumps({"v": 1, "l": listing, "k": list(position)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(listing: str, token: str | None) -> Position | None:
    """The position after which the next page starts, or None for the first page."""
    if token is None or token == "":
        return None
    bad = InvalidInput(
        f"page token {str(token)[:40]!r} is not a {listing} page token; pass the "
        "next_page_token of the previous response unchanged"
    )
    if not isinstance(token, str) or len(token) > 1024:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(data, dict) or data.get("v") != 1 or data.get("l") != listing:
        raise bad
    key = data.get("k")
    if listing in ("parties", "policies"):
        if isinstance(key, list) and len(key) == 1 and isinstance(key[0], str):
            return (key[0],)
        raise bad
    if (
        isinstance(key, list)
        and len(key) == 2
        and isinstance(key[0], int | float)
        and not isinstance(key[0], bool)
        and isinstance(key[1], str)
    ):
        return (float(key[0]), key[1])
    raise bad

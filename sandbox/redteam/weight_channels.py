"""The weight channels of the scorecard: Song et al.'s attacks through the real pipeline.

Each attack package (`sandbox.redteam.attacks`, at the paper's strength) is run by
`run_local` against the policy under test, exactly as a provider's job would be:
the same runner and image, the digits sample data, and a throwaway signing key,
audit log and in-memory privacy ledger, so the scorecard never touches the
operator's own. The attacker's decoder is then applied to what was actually
released (nothing if the job was rejected) and scored against chance. As a control,
the same decoder also reads the gated candidate in the job's workspace (captured
when the checks start; never released): a `neutralized` or `detected` whose control
is at chance would mean a broken attack, not a defence. The truth is the train.npz
the job gave train.py, also read from the workspace (a policy with a membership
audit holds canaries back, so it is not simply the split).

Scoring:

- bit channels (LSB, encrypted LSB, sign, and capacity abuse, whose decoder queries
  the released model instead of reading its weights): the decoded bits are compared
  with the bits of the records the attack encoded. Chance is the mean match rate of
  the same decoded bits against randomly permuted training records: what a decoder
  that knows nothing about which record is which scores (0.5 when the decoded bits
  are uniform, as after the sanitizer). Extraction beats chance when the one-sided
  99.95% binomial (Wilson) lower bound of the bit accuracy is above that chance
  level, with the control's own sampling error added.
- correlated value: each reconstructed record's mean absolute error against its own
  record is compared with its mean error against permuted records (chance); the
  share of records closer to their own record than to the others is tested against
  0.5 the same way. The error of guessing the value range's midpoint for every pixel
  (a data-free baseline) is reported beside it.

Outcomes (`classify`): `detected` when a check flagged the model and what was
released (if anything) carries nothing; `neutralized` when a model was released
(sanitized or DP-retrained) and extraction is at chance; `blocked` when the job was
rejected without a flag (a failed step); `leaked` when extraction beats chance.

Jobs run in threads: under a fixed release time the pipeline holds each outcome
with a sleep, so holds overlap while the jobs' computing parts take turns
(`parallel` at a time: a job gives its turn up when it starts holding).
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sandbox.demo import sample_dataset, write_digits
from sandbox.dp import InMemoryBudgetLedger
from sandbox.pipeline.dataset import Dataset, split_holdout
from sandbox.pipeline.local import run_local
from sandbox.pipeline.report import Report
from sandbox.policy.model import Policy
from sandbox.redteam.attacks import Decoded, Knowledge, decode, make_package, true_bits
from sandbox.redteam.capacity import (
    decode_capacity,
    make_capacity_package,
    mlp_query,
    true_capacity_bits,
)
from sandbox.redteam.harness import load_weights
from sandbox.redteam.metrics import record_mae
from sandbox.runner.base import Runner

#: The bits an attack meant to carry for the first n records (needs the data).
TruthBits = Callable[[npt.NDArray[np.floating], int, Knowledge], npt.NDArray[np.uint8]]
Outcome = Literal["blocked", "neutralized", "detected", "leaked"]
Budget = Literal["small", "full"]

#: One-sided 99.95% normal quantile: a scorecard of a few channels stays well
#: below one false "leaked" in a thousand runs.
Z: Final = 3.29
#: Permuted-record controls averaged into the chance level.
CONTROLS: Final = 16
#: Training epochs per budget: 10 keeps every attack working (tests/unit/
#: test_redteam_attacks.py and tests/integration/test_scorecard_weights.py check it).
EPOCHS: Final[Mapping[str, int]] = {"small": 10, "full": 30}


@dataclass(frozen=True)
class WeightChannel:
    name: str  # the scorecard entry's name
    attack: str  # sandbox.redteam.attacks.ATTACKS key
    channel: str
    attempt: str
    overrides: Mapping[str, Any] = field(default_factory=dict)  # attack parameters


CHANNELS: Final = (
    WeightChannel(
        "lsb", "lsb", "LSB", "raw training records in the low 16 mantissa bits of every weight"
    ),
    WeightChannel(
        "lsb-encrypted",
        "lsb_encrypted",
        "LSB",
        "encrypted records in the low 16 mantissa bits (looks like noise to the checks)",
    ),
    WeightChannel(
        "lsb-above-sanitizer",
        "lsb_encrypted",
        "LSB",
        "encrypted records in the low 22 mantissa bits: 3 bits per weight above the "
        "sanitizer's 19 (undone by rescaling the hidden units)",
        {"k": 22},
    ),
    WeightChannel(
        "lsb-pilot",
        "lsb_pilot",
        "LSB",
        "encrypted records in mantissa bits 19-21 and keyed pilot weights that reveal each "
        "hidden unit's secret rescaling factor (an attacker who knows the platform)",
    ),
    WeightChannel(
        "correlated-value",
        "correlated",
        "correlated value",
        "first-layer weights correlated with training records (regulariser, lambda 3)",
    ),
    WeightChannel(
        "sign-encoding", "sign", "sign", "weight signs set to record bits (regulariser, lambda 30)"
    ),
    WeightChannel(
        "capacity-abuse",
        "capacity",
        "capacity abuse",
        "20 records' bits as labels of 1,280 synthetic inputs; read back by querying the model",
    ),
)


#: Channels only the full budget runs (see `channels_for`).
FULL_ONLY: Final = frozenset({"lsb", "lsb-above-sanitizer", "lsb-pilot"})


def channels_for(budget: Budget) -> tuple[WeightChannel, ...]:
    """`full`: every channel. `small` leaves the LSB variants but the encrypted one out:
    raw LSB is its weaker twin (flagged by lowbit_patterned besides being sanitized away;
    pinned by tests/unit/test_redteam_attacks.py), and the two above the sanitizer's bits
    are pinned by tests/integration/test_scorecard_weights.py; the five jobs of the small
    budget already use about 300 CPU-seconds of the 2-core box, most of strict's 240 s
    release time when they run at once (README, red-team scorecard): more would make
    them late."""
    return CHANNELS if budget == "full" else tuple(c for c in CHANNELS if c.name not in FULL_ONLY)


#: The attacks the checks flag (then DP retraining runs, where the policy has it).
LONGEST: Final = frozenset({"correlated", "sign"})
#: Capacity abuse must memorise its synthetic inputs: 20 epochs (tests/unit/test_capacity.py).
CAPACITY_MIN_EPOCHS: Final = 20


def _make(channel: WeightChannel, dest: Path, epochs: int) -> Knowledge:
    if channel.attack == "capacity":
        return make_capacity_package(dest, epochs=max(epochs, CAPACITY_MIN_EPOCHS))
    return make_package(channel.attack, dest, epochs=epochs, **channel.overrides)


def _score(
    tensors: Mapping[str, npt.NDArray[np.floating]],
    knowledge: Knowledge,
    x_train: npt.NDArray[np.floating],
) -> Extraction | None:
    """The attacker's decoder on `tensors`, scored; capacity abuse only queries the model."""
    if knowledge.attack == "capacity":
        query = mlp_query(tensors, float(knowledge.params["input_scale"]))
        decoded = decode_capacity(query, knowledge)
        return score_extraction(decoded, x_train, knowledge, truth_bits=true_capacity_bits)
    return score_extraction(decode(tensors, knowledge), x_train, knowledge)


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Extraction:
    """How much the attacker's decoder got out of a released model, against chance."""

    statistic: str  # "bit accuracy" or "record win rate"
    observed: float
    chance: float
    n: int  # bits, or records
    lower: float  # one-sided lower confidence bound of `observed`
    margin: float  # how far above chance `lower` must be (the control's own error)
    records: int
    recovered: int  # records within 10% of the value range (metrics.RECOVERED_FRACTION)
    mae: float
    chance_mae: float
    midpoint_mae: float

    @property
    def leaked(self) -> bool:
        return self.lower > self.chance + self.margin

    def summary(self) -> str:
        verdict = "beats chance" if self.leaked else "at chance"
        text = (
            f"{self.statistic} {self.observed:.4f} over {self.n} "
            f"{'bits' if self.statistic == 'bit accuracy' else 'records'} "
            f"(lower bound {self.lower:.4f}) vs chance {self.chance:.4f}: {verdict}; "
            f"{self.recovered}/{self.records} records recovered, "
            f"error {self.mae:.2f} vs {self.chance_mae:.2f} against other records"
        )
        if self.statistic != "bit accuracy":
            text += f" and {self.midpoint_mae:.2f} guessing the midpoint"
        return text


def wilson_lower(p: float, n: int, z: float = Z) -> float:
    """One-sided Wilson lower bound of a binomial proportion `p` seen over `n` trials."""
    if n <= 0:
        return 0.0
    denom = 1 + z * z / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - spread) / denom)


def _permutations(n: int, rng: np.random.Generator) -> list[npt.NDArray[np.intp]]:
    """Permutations with no fixed point (every record is compared with another)."""
    out = []
    for _ in range(CONTROLS):
        perm = rng.permutation(n)
        fixed = perm == np.arange(n)
        perm[fixed] = (perm[fixed] + 1) % n if n > 1 else perm[fixed]
        out.append(perm)
    return out


def score_extraction(
    decoded: Decoded,
    x_train: npt.NDArray[np.floating],
    knowledge: Knowledge,
    *,
    seed: int = 0,
    truth_bits: TruthBits = true_bits,
) -> Extraction | None:
    """Score a decoder's output on the training records it meant to carry, against chance.

    Needs the data: the red team's yardstick, never the attacker's. None when the
    decoder produced nothing.
    """
    n = min(len(decoded.records), len(x_train))
    if n == 0:
        return None
    rng = np.random.default_rng(seed)
    truth = np.asarray(x_train[:n], dtype=np.float64).reshape(n, -1)
    perms = _permutations(len(x_train), rng)
    errors = record_mae(decoded.records[:n], truth)
    control = np.mean(
        [record_mae(decoded.records[:n], x_train[perm[:n]]) for perm in perms], axis=0
    )
    lo, hi = knowledge.value_range
    midpoint = float(np.abs(truth - (lo + hi) / 2).mean())
    recovered = int(np.count_nonzero(errors < 0.1 * (hi - lo)))

    def result(statistic: str, observed: float, chance: float, m: int, margin: float) -> Extraction:
        return Extraction(
            statistic,
            observed,
            chance,
            m,
            wilson_lower(observed, m),
            margin,
            records=n,
            recovered=recovered,
            mae=float(errors.mean()),
            chance_mae=float(control.mean()),
            midpoint_mae=midpoint,
        )

    if decoded.bits is not None:
        bits = decoded.bits
        want = truth_bits(np.asarray(x_train), n, knowledge)
        m = min(len(bits), len(want))
        observed = float(np.mean(bits[:m] == want[:m]))
        chances = [
            float(np.mean(bits[:m] == truth_bits(np.asarray(x_train)[perm], n, knowledge)[:m]))
            for perm in perms
        ]
        chance = float(np.mean(chances))
        margin = Z * math.sqrt(chance * (1 - chance) / (m * CONTROLS))
        return result("bit accuracy", observed, chance, m, margin)
    wins = float(np.mean(errors < control) + 0.5 * np.mean(errors == control))
    return result("record win rate", wins, 0.5, n, 0.0)


# --------------------------------------------------------------------------- outcome


def run_job(
    base: Path,
    dataset: Path,
    policy: Policy,
    runner: Runner,
    image: str,
    job_id: str,
    progress: Callable[[str, str], None],
) -> Report:
    """One scorecard job: base/package on `dataset` through `run_local`, in a world of
    its own (work root, throwaway signing key, audit log, in-memory privacy ledger)."""
    return run_local(
        base / "package",
        dataset,
        policy,
        base / "out",
        runner=runner,
        image=image,
        work_root=base / "work",  # its own root: run_local sweeps its root's stale jobs
        progress=progress,
        job_id=job_id,
        signing_key=Ed25519PrivateKey.generate(),
        audit_path=base / "audit.jsonl",
        ledger=InMemoryBudgetLedger(),
        dataset_id="scorecard-digits",
    )


def flagged_by(report: Report) -> list[str]:
    """Every check that flagged the candidate: weight checks, probes, the membership audit."""
    names = [c["name"] for c in report.checks if c.get("verdict") == "flag"]
    names += [c["name"] for c in (report.probes or {}).get("checks", []) if c["verdict"] == "flag"]
    if (report.membership or {}).get("verdict") == "flag":
        names.append("membership_audit")
    return names


def classify(decision: str, flagged: Sequence[str], extraction: Extraction | None) -> Outcome:
    """The scorecard outcome of one weight attack (pure; see the module docstring).

    `extraction` is None when nothing was released or the decoder read nothing.
    """
    released = decision != "rejected"
    if released and extraction is not None and extraction.leaked:
        return "leaked"
    if flagged:
        return "detected"
    if released:
        return "neutralized"
    return "blocked"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def job_time(seconds: float, computing: float | None = None) -> str:
    """The job's duration and, when it held its outcome to a fixed release time, how
    much of it was computing: the margin a busier host would eat into."""
    if computing is None:
        return f"job {seconds:.0f} s"
    return f"job {seconds:.0f} s, {computing:.0f} s of it computing before the hold"


def evidence(
    report: Report,
    extraction: Extraction | None,
    control: Extraction | None,
    seconds: float,
    computing: float | None = None,
) -> str:
    flagged = flagged_by(report)
    parts = [f"decision {report.decision}"]
    parts.append(f"flagged by {', '.join(flagged)}" if flagged else "no check flagged it")
    if report.decision == "rejected":
        # the flags are listed already; say what else decided it (DP failed, too late, ...)
        other = [_short(r) for r in report.reasons if not r.startswith("check ")]
        late = [r for r in other if "fixed release time" in r]
        other = late or other  # too late overrides what the decision would have been
        parts.append("nothing released" + (f" ({'; '.join(other)})" if other else ""))
    elif extraction is None:
        parts.append("the decoder read nothing from the released model")
    else:
        source = (report.model or {}).get("source", "?")
        parts.append(f"decoder on the released {source} model: {extraction.summary()}")
    if control is None:
        parts.append("control: the gated candidate could not be read")
    else:
        parts.append(
            f"control, the decoder on the unreleased candidate: {control.statistic} "
            f"{control.observed:.4f} vs chance {control.chance:.4f}, "
            f"{control.recovered}/{control.records} records recovered"
        )
    parts.append(job_time(seconds, computing))
    return "; ".join(parts)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class WeightResult:
    channel: WeightChannel
    outcome: Outcome
    evidence: str
    report: Report
    extraction: Extraction | None
    control: Extraction | None  # the decoder on the gated candidate (the attack worked?)


def training_split(policy: Policy) -> npt.NDArray[np.float32]:
    """The training split in the order the pipeline hands it to train.py, before any
    canaries are held back (the fallback when the job's train.npz was not seen)."""
    x, y = sample_dataset("digits")
    train, _ = split_holdout(
        Dataset(x=x, y=y, num_classes=10, input_shape=(64,)),
        policy.holdout_fraction,
        policy.holdout_seed,
    )
    return train.x


class _Turns:
    """At most `parallel` jobs compute at once; a job gives its turn up when it holds."""

    def __init__(self, parallel: int) -> None:
        self._slots = threading.Semaphore(parallel)

    def job(self) -> Callable[[], None]:
        self._slots.acquire()
        done = threading.Event()

        def give_up() -> None:
            if not done.is_set():
                done.set()
                self._slots.release()

        return give_up


def run_weight_channel(
    channel: WeightChannel,
    policy: Policy,
    runner: Runner,
    image: str,
    root: Path,
    *,
    epochs: int,
    turns: _Turns | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> WeightResult:
    """One attack through `run_local` against `policy`, decoded and scored."""
    base = root / channel.name
    base.mkdir(parents=True)
    dataset = write_digits(base / "digits.npz")
    knowledge = _make(channel, base / "package", epochs)
    give_up = turns.job() if turns else (lambda: None)

    job_id = uuid.uuid4().hex
    workspace = base / "work" / job_id
    candidate = workspace / "work" / "candidate.safetensors"
    captured: dict[str, npt.NDArray[np.floating]] = {}
    given: list[npt.NDArray[np.float32]] = []
    held: list[float] = []  # when the job began holding its outcome

    def progress(step: str, message: str) -> None:
        if step == "architecture" and (workspace / "data" / "train.npz").is_file():
            # what train.py is given (the policy may hold canaries back): the truth
            with np.load(workspace / "data" / "train.npz", allow_pickle=False) as data:
                given.append(np.asarray(data["x"], dtype=np.float32))
        if step == "checks" and candidate.is_file():  # gated, not yet checked or released
            captured.update(load_weights(candidate))
        if step == "hold":
            held.append(time.monotonic())
            give_up()

    say(f"weights: {channel.name} submitted")
    started = time.monotonic()
    try:
        report = run_job(base, dataset, policy, runner, image, job_id, progress)
    finally:
        give_up()
    seconds = time.monotonic() - started
    x_train = given[0] if given else training_split(policy)
    extraction = None
    if report.decision != "rejected":
        released = load_weights(base / "out" / "model.safetensors")
        extraction = _score(released, knowledge, x_train)
    control = _score(captured, knowledge, x_train) if captured else None
    flagged = flagged_by(report)
    outcome = classify(report.decision, flagged, extraction)
    say(f"weights: {channel.name} {outcome}")
    text = evidence(report, extraction, control, seconds, held[0] - started if held else None)
    return WeightResult(channel, outcome, text, report, extraction, control)


def start_weight_channels(
    policy: Policy,
    runner: Runner,
    image: str,
    *,
    budget: Budget = "small",
    parallel: int = 2,
    channels: Sequence[WeightChannel] | None = None,
    progress: Callable[[str], None] | None = None,
    turns: _Turns | None = None,
) -> Callable[[], list[WeightResult]]:
    """Start the budget's weight attacks in the background; the returned call waits.

    Starting first lets a caller run other scorecard probes while the jobs hold
    until the policy's fixed release time. `turns` (default: `parallel` of them)
    can be shared with the caller's other jobs (the scorecard's membership job).
    """
    say = progress or (lambda message: None)
    tmp = tempfile.TemporaryDirectory(prefix="sandbox-scorecard-weights-")
    root = Path(tmp.name)
    turns = turns or _Turns(parallel)
    if channels is None:
        channels = channels_for(budget)
    pool = ThreadPoolExecutor(max_workers=len(channels), thread_name_prefix="weights")
    # Turns go in submission order: the regulariser attacks first, as a policy that
    # flags them retrains them with DP (the longest jobs, and each must end before its
    # own fixed release time).
    first = sorted(channels, key=lambda c: c.attack not in LONGEST)
    futures: dict[str, Future[WeightResult]] = {
        channel.name: pool.submit(
            run_weight_channel,
            channel,
            policy,
            runner,
            image,
            root,
            epochs=EPOCHS[budget],
            turns=turns,
            say=say,
        )
        for channel in first
    }

    def wait() -> list[WeightResult]:
        try:
            return [futures[channel.name].result() for channel in channels]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            tmp.cleanup()

    return wait

"""The red-team scorecard: every escape and smuggling attempt against one policy.

Each entry names a channel, what the attempt did, its outcome and the evidence:

- ``blocked``: the attempt failed (no connection, write refused, gate rejected it);
- ``neutralized``: it ran but what it carried was destroyed or bounded;
- ``detected``: a check flagged it and the model was not released as is;
- ``leaked``: information left. A policy may leave a channel open on purpose (the
  default policy does not hide timing); the scorecard says so instead of hiding it.

Budget mode "small" lowers the wall-clock limit of the endless-loop probe (to show
the kill without waiting the policy's full limit) and the release time of the timing
probes (two jobs whose train.py overruns a fixed release time by different amounts,
which must have their outcomes appear at the same time) to SMALL_PROBE_DELAY (beside the
attack jobs SMALL_PROBE_DELAY_BESIDE_JOBS); every
other attempt runs under the policy's own settings; the weight attacks train for 10
epochs instead of 30 (enough for each to carry records) and raw LSB runs in "full" only
(sandbox/redteam/weight_channels.py says why). The membership channel
(sandbox/redteam/membership_channel.py) is one more whole job, the same in both modes.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from sandbox.demo import EXAMPLE_ALGORITHM, write_digits
from sandbox.gate import GateViolation, TensorSpec, gate_output
from sandbox.pipeline.local import RELEASE_SLACK_SECONDS
from sandbox.policy.model import Policy
from sandbox.redteam import escapes, membership_channel, weight_channels
from sandbox.redteam.escapes import AttackBox
from sandbox.runner.base import Runner
from sandbox.runner.workspace import JobWorkspace

Outcome = Literal["blocked", "neutralized", "detected", "leaked"]
Budget = Literal["small", "full"]
MB = 1024 * 1024


@dataclass(frozen=True)
class Entry:
    name: str
    channel: str
    attempt: str
    outcome: Outcome
    evidence: str


@dataclass
class Scorecard:
    policy: str
    results: list[Entry]

    def to_dict(self) -> dict[str, Any]:
        return {"policy": self.policy, "results": [asdict(entry) for entry in self.results]}

    @property
    def leaked(self) -> list[Entry]:
        return [entry for entry in self.results if entry.outcome == "leaked"]

    def table(self) -> str:
        """A plain-text table: channel, attempt, outcome, evidence."""
        rows = [("channel", "attempt", "outcome", "evidence")]
        rows += [(e.channel, e.name, e.outcome, e.evidence) for e in self.results]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        return "\n".join(
            "  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows
        )


@contextmanager
def _box(runner: Runner, image: str, policy: Policy, root: Path, name: str) -> Iterator[AttackBox]:
    with JobWorkspace(root, f"scorecard-{name}") as ws:
        yield AttackBox(runner, image, policy, ws)


def _network(box: AttackBox) -> Entry:
    result, targets = box.network()
    reached = [t for t in targets if t.accepted] or [
        c for c in result["connect"] if c == "connected"
    ]
    sockets = [k for k in ("raw", "packet") if result[k] == "opened"]
    leaked = bool(reached or sockets or result["dns"] == "resolved" or result["routes"])
    evidence = (
        f"interfaces {result['interfaces']}, {result['routes']} routes; connects to "
        f"{len(targets)} host listeners: {result['connect']}; raw {result['raw']}, "
        f"packet {result['packet']}, DNS {result['dns']}"
    )
    attempt = "connect to host loopback and Docker bridge, raw/packet sockets, DNS"
    return Entry("network-escape", "network", attempt, "leaked" if leaked else "blocked", evidence)


def _filesystem(box: AttackBox) -> Entry:
    result = box.json(escapes.FILESYSTEM_PROBE)
    allowed = {"/tmp/ok", "/output/ok"}
    written = sorted(p for p, v in result.items() if v == "written" and p not in allowed)
    evidence = (
        f"writes refused: {sum(v != 'written' for v in result.values())} of {len(result) - 2}; "
        f"unexpected writes: {written or 'none'}"
    )
    outcome: Outcome = "leaked" if written else "blocked"
    attempt = "write to /, /etc, /data, /algorithm, guest code"
    return Entry("write-outside-output", "filesystem", attempt, outcome, evidence)


def _privileges(box: AttackBox) -> Entry:
    result = box.json(escapes.PRIVILEGE_PROBE)
    caps = {k: result[k] for k in ("CapEff", "CapPrm", "CapBnd") if result.get(k)}
    nonzero = [k for k, v in caps.items() if int(v, 16) != 0]
    escalated = [b for b, code, out in result["runs"] if code == 0 or out == "0"]
    leaked = bool(
        nonzero or escalated or result["setuid"] != "PermissionError" or result["docker_socket"]
    )
    evidence = (
        f"uid {result['uid']}, capabilities {caps}, setuid(0): {result['setuid']}, "
        f"setuid binaries run: {len(result['runs'])} gained root: {escalated or 'none'}, "
        f"Docker socket: {result['docker_socket'] or 'absent'}"
    )
    attempt = "setuid(0), setuid binaries, capabilities, Docker socket"
    outcome: Outcome = "leaked" if leaked else "blocked"
    return Entry("privilege-escalation", "privileges", attempt, outcome, evidence)


def _resources(box: AttackBox, policy: Policy, budget: Budget) -> list[Entry]:
    entries = []
    forked = box.run(escapes.FORK_BOMB)
    logs = forked.logs.decode(errors="replace")
    counts = escapes.fork_counts(logs)
    bounded = max(counts, default=0) < policy.limits.pids + 64
    entries.append(
        Entry(
            "fork-bomb",
            "resources",
            "fork until refused",
            "blocked" if bounded else "leaked",
            f"{max(counts, default=0)} forks before refusal or teardown (pids limit "
            f"{policy.limits.pids}, runtime {policy.runtime})",
        )
    )
    bomb = box.run(escapes.MEMORY_BOMB)
    survived = b"survived" in bomb.logs
    entries.append(
        Entry(
            "memory-bomb",
            "resources",
            "allocate 4 GiB in 64 MiB steps",
            "leaked" if survived else "blocked",
            f"killed: oom={bomb.status.oom_killed}, exit {bomb.status.exit_code} "
            f"(memory limit {policy.limits.memory_mb} MB, swap 0)",
        )
    )
    fill = box.json(escapes.DISK_FILL)
    caps = {
        "/tmp/fill": policy.limits.tmp_mb,
        "/output/fill": policy.limits.output_mb,
        "/dev/shm/fill": 64,
    }
    over = [p for p, (written, _) in fill.items() if written > caps[p] * MB]
    entries.append(
        Entry(
            "disk-fill",
            "resources",
            "fill /tmp, /output and /dev/shm",
            "leaked" if over else "blocked",
            ", ".join(
                f"{path.split('/fill')[0]} stopped at {written // MB} MB ({error})"
                for path, (written, error) in fill.items()
            ),
        )
    )
    wall = 5 if budget == "small" else policy.limits.wall_seconds
    limits = policy.limits.model_copy(update={"wall_seconds": wall})
    limited = policy.model_copy(update={"limits": limits})
    loop = box.run(escapes.ENDLESS_LOOP, limited)
    entries.append(
        Entry(
            "endless-loop",
            "resources",
            "spin forever",
            "blocked" if loop.status.timed_out else "leaked",
            f"killed after {loop.status.duration_s:.1f} s at a {wall} s wall-clock limit"
            + (" (budget mode: limit lowered from the policy's)" if budget == "small" else ""),
        )
    )
    return entries


_EXPECTED = {"w": TensorSpec("F32", (4, 4)), "b": TensorSpec("F32", (4,))}
_HONEST = (
    "import numpy as np\nfrom safetensors.numpy import save_file\n"
    "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32)}, "
    "'/output/model.safetensors')\n"
)
SMUGGLING: dict[str, tuple[str, str]] = {
    "extra-file": ("open('/output/notes.txt', 'w').write('secret')", "a file beside the model"),
    "symlink-to-dataset": (
        "import os; os.remove('/output/model.safetensors'); "
        "os.symlink('/data/train.npz', '/output/model.safetensors')",
        "model.safetensors as a symlink to the dataset",
    ),
    "pickle-as-model": (
        "import pickle; open('/output/model.safetensors', 'wb').write(pickle.dumps({'w': 1}))",
        "a pickle named model.safetensors",
    ),
    "extra-tensor": (
        "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32), "
        "'data': np.ones(100, np.float32)}, '/output/model.safetensors')",
        "an extra tensor holding data",
    ),
    "metadata": (
        "save_file({'w': np.ones((4, 4), np.float32), 'b': np.ones(4, np.float32)}, "
        "'/output/model.safetensors', metadata={'secret': 'x' * 100})",
        "data in __metadata__",
    ),
    "nan-payload": (
        "w = np.ones((4, 4), np.float32); w.view(np.uint32)[0, :] = 0x7FC0BEEF; "
        "save_file({'w': w, 'b': np.ones(4, np.float32)}, '/output/model.safetensors')",
        "bits in NaN payloads",
    ),
    "padding": (
        "open('/output/model.safetensors', 'ab').write(b'\\0' * 4096)",
        "bytes appended after the tensors",
    ),
}


def _smuggling(box: AttackBox, policy: Policy, scratch: Path) -> list[Entry]:
    entries = []
    for name, (code, attempt) in SMUGGLING.items():
        for leftover in box.output.iterdir():
            leftover.unlink()
        result = box.run(_HONEST + code + "\n")
        if not result.status.ok:
            raise RuntimeError(f"smuggling attempt {name} did not run: {result.logs[-300:]!r}")
        dest = scratch / f"{name}.safetensors"
        try:
            gate_output(box.output, _EXPECTED, policy.gate, dest)
        except GateViolation as rejected:
            entries.append(Entry(name, "output smuggling", attempt, "blocked", rejected.message))
        else:
            accepted = "the gate accepted it"
            entries.append(Entry(name, "output smuggling", attempt, "leaked", accepted))
    return entries


#: Outcome times of the overrun probes that differ by at most this much count as fixed:
#: host noise (killing a container, writing the report), far below the seconds a train.py
#: chooses; a leak of the old kind moved them by minutes.
TIMING_TOLERANCE_S = 3.0
#: The probes' release time in budget mode "small" (at most the policy's own); "full"
#: uses the policy's. 60 s: prepare and the gVisor export of the digits MLP take 15-45 s,
#: so train.py has started when the release time comes (it must, or the probe shows
#: nothing).
SMALL_PROBE_DELAY = 60
#: The same beside the attack jobs (the card with weights): the probes run while those
#: compute, to end by their release time (`timing_span`), and there prepare, export and
#: describe took over 60 s (2026-12-06, load 5-11).
SMALL_PROBE_DELAY_BESIDE_JOBS = 150
#: How long each probe's train.py sleeps, in multiples of the probes' release time: all
#: past it, by different amounts, as a train.py signalling bits would.
PROBE_SLEEPS = (2, 5)


@dataclass(frozen=True)
class TimingProbe:
    """One overrun probe: a job whose train.py sleeps `sleep_s` before training."""

    sleep_s: float
    seconds: float  # from submission until run_local returned with the outcome
    decision: str
    reason: str

    @property
    def step(self) -> str:
        """The step the job was in when the release time came (or its first reason)."""
        return self.reason.split(":", 1)[0] if ":" in self.reason else self.reason[:60]


def probe_delay(policy: Policy, budget: Budget, beside_jobs: bool = False) -> int | None:
    """The release time the timing probes run under (None: the policy has none);
    `beside_jobs`: they run while the attack jobs compute."""
    delay = policy.release.fixed_delay_seconds
    if delay is None or budget == "full":
        return delay
    return min(delay, SMALL_PROBE_DELAY_BESIDE_JOBS if beside_jobs else SMALL_PROBE_DELAY)


#: A timing job's outcome appears its release time plus the slack after it starts
#: (that is the point); this margin is for writing the outcome and collecting it.
TIMING_MARGIN_SECONDS = 15


def timing_span(policy: Policy, budget: Budget, beside_jobs: bool = False) -> float:
    """How long the timing jobs take from their start to their (fixed) outcome time."""
    delay = probe_delay(policy, budget, beside_jobs)
    return 0.0 if delay is None else delay + RELEASE_SLACK_SECONDS + TIMING_MARGIN_SECONDS


def _sleeping_package(dest: Path, sleep_s: float) -> None:
    """The digits example whose train.py first sleeps `sleep_s` (as if read from the data)."""
    shutil.copytree(EXAMPLE_ALGORITHM, dest)
    train = dest / "train.py"
    train.write_text(
        f"import time\ntime.sleep({sleep_s!r})  # the attacker's data-dependent delay\n"
        + train.read_text()
    )


def _timing_probe(
    policy: Policy, runner: Runner, image: str, root: Path, sleep_s: float
) -> TimingProbe:
    base = root / f"sleep-{sleep_s:g}"
    (base / "package").parent.mkdir(parents=True)
    _sleeping_package(base / "package", sleep_s)
    dataset = write_digits(base / "digits.npz")
    started = time.monotonic()
    report = weight_channels.run_job(
        base, dataset, policy, runner, image, uuid.uuid4().hex, lambda step, message: None
    )
    seconds = time.monotonic() - started
    return TimingProbe(sleep_s, seconds, report.decision, (report.reasons or [""])[0])


def start_timing_probes(
    policy: Policy,
    runner: Runner,
    image: str,
    *,
    budget: Budget = "small",
    beside_jobs: bool = False,
    say: Callable[[str], None] = lambda message: None,
) -> Callable[[], list[TimingProbe]] | None:
    """Under a fixed release time, start the overrun probes in the background (None
    without one); the returned call waits for them. Each is a whole job through
    `run_local` under `policy` with its release time at `probe_delay`."""
    delay = probe_delay(policy, budget, beside_jobs)
    if delay is None:
        return None
    release = policy.release.model_copy(update={"fixed_delay_seconds": delay})
    probed = policy.model_copy(update={"release": release})
    tmp = tempfile.TemporaryDirectory(prefix="sandbox-scorecard-timing-")
    pool = ThreadPoolExecutor(max_workers=len(PROBE_SLEEPS), thread_name_prefix="timing")
    say(f"timing: {len(PROBE_SLEEPS)} jobs overrunning a {delay} s release time")
    futures = [
        pool.submit(_timing_probe, probed, runner, image, Path(tmp.name), float(k * delay))
        for k in PROBE_SLEEPS
    ]

    def wait() -> list[TimingProbe]:
        try:
            return [future.result() for future in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            tmp.cleanup()

    return wait


def _timing(policy: Policy, probes: Sequence[TimingProbe] = (), delay: int | None = None) -> Entry:
    """Judged by measurement: jobs whose train.py overruns the release time by different
    amounts (`start_timing_probes`) must have their outcomes appear at the same time.

    Each overrun probe is stopped at the release time and its rejection appears a fixed
    slack later (sandbox/pipeline/local.py); a job that ends in time appears at the
    release time. `neutralized` only if both probes were stopped in train (where their
    delay runs: a probe stopped before it never tried) and rejected for the release
    time, and their outcome times agree within TIMING_TOLERANCE_S.
    """
    attempt = "modulate how long the job runs to signal bits"
    if policy.release.fixed_delay_seconds is None:
        evidence = (
            "this policy releases as soon as the job ends, so the release time follows the "
            "training time (set release.fixed_delay_seconds to hide it)"
        )
        return Entry("timing", "timing", attempt, "leaked", evidence)
    own = policy.release.fixed_delay_seconds
    delay = delay or own
    if len(probes) < 2:
        evidence = "not measured (no overrun probes ran): a fixed release time alone proves nothing"
        return Entry("timing", "timing", attempt, "leaked", evidence)
    slack = RELEASE_SLACK_SECONDS
    spread = max(p.seconds for p in probes) - min(p.seconds for p in probes)
    stopped = all(p.decision == "rejected" and "fixed release time" in p.reason for p in probes)
    tried = all(p.step == "train" for p in probes)
    fixed = stopped and tried and spread <= TIMING_TOLERANCE_S
    sleeps = " and ".join(f"{p.sleep_s:.0f} s" for p in probes)
    times = " and ".join(f"{p.seconds:.1f} s" for p in probes)
    decisions = ", ".join(f"{p.decision} in {p.step}" for p in probes)
    lowered = f" (budget mode: lowered from the policy's {own} s)" if delay != own else ""
    evidence = (
        f"jobs whose train.py slept {sleeps}, past the {delay} s release time{lowered}: "
        f"{decisions}; outcomes {times} after submission (release + {slack:.0f} s slack = "
        f"{delay + slack:.0f} s), spread {spread:.1f} s "
        + (f"<= {TIMING_TOLERANCE_S:.0f} s" if fixed else f"(tolerance {TIMING_TOLERANCE_S:.0f} s)")
        + f"; a job that ends in time appears at {delay} s: "
        + (
            "two fixed times whatever the job does"
            if fixed
            else "the outcome time follows what the job did"
            if tried
            else "not shown: a probe was stopped before train.py's delay ran (a busy host); "
            "rerun the card"
        )
    )
    return Entry("timing", "timing", attempt, "neutralized" if fixed else "leaked", evidence)


def _conventional(policy: Policy) -> list[Entry]:
    """Channels closed (or not) by how the pipeline is built, with the mechanism as evidence."""
    return [
        Entry(
            "file-size",
            "file size",
            "encode bits in the model file's size",
            "blocked",
            "the gate requires names, shapes and dtypes equal to the declared architecture "
            "and rewrites the file canonically: its size is fixed before the data is seen",
        ),
        Entry(
            "logs",
            "logs",
            "print data to stdout/stderr",
            "blocked",
            "container logs are capped at "
            f"{policy.limits.log_kb} KiB and written to owner/logs.txt (0600) only; "
            "the provider receives the decision and the model",
        ),
        Entry(
            "exit-status",
            "exit status",
            "signal bits by crashing or exiting with a chosen status",
            "neutralized",
            "the provider learns only the decision (released or rejected): at most one "
            "bit per job, not the status or the reason",
        ),
    ]


def _isolation_and_smuggling(
    policy: Policy,
    runner: Runner,
    image: str,
    budget: Budget,
    say: Callable[[str], None],
    work_root: Path | None,
) -> list[Entry]:
    entries: list[Entry] = []
    with tempfile.TemporaryDirectory(prefix="sandbox-scorecard-") as tmp:
        root = work_root or Path(tmp) / "work"
        with _box(runner, image, policy, root, "isolation") as box:
            for label, probe in (
                ("network", _network),
                ("filesystem", _filesystem),
                ("privileges", _privileges),
            ):
                say(f"isolation: {label}")
                entries.append(probe(box))
            say("isolation: resources")
            entries.extend(_resources(box, policy, budget))
        with _box(runner, image, policy, root, "smuggling") as box:
            say("output smuggling")
            entries.extend(_smuggling(box, policy, Path(tmp)))
    return entries


#: Jobs computing at once when each outcome is released as soon as its job ends.
PARALLEL = 2


def parallel_jobs(policy: Policy, jobs: int) -> int:
    """How many of the scorecard's `jobs` whole jobs compute at once.

    Under a fixed release time every job's outcome appears exactly its delay after
    the job starts, so the scorecard ends at the last job's start plus the delay:
    starting every job at once ends it soonest, provided their computing, sharing
    the cores, ends within the delay (strict on the 2-core box: README, red-team
    scorecard). In turns of two the last job of five started only after two rounds
    of computing: 280-379 s under strict. Without a hold the cores are the limit
    whichever way the jobs are ordered, and two at a time contend least.
    """
    return jobs if policy.release.fixed_delay_seconds is not None else min(PARALLEL, jobs)


def run_scorecard(
    policy: Policy,
    runner: Runner,
    image: str,
    *,
    budget: Budget = "small",
    progress: Callable[[str], None] | None = None,
    work_root: Path | None = None,
    weights: bool = False,
) -> Scorecard:
    """Every attempt against `policy`. `weights` adds the weight attacks and the
    membership attack, each a whole job through the pipeline (minutes; `sandbox policy
    test` always runs them). They start first; under a fixed release time all of them
    at once, and the isolation probes run while they hold (`parallel_jobs`); the timing
    jobs (`start_timing_probes`, two whole jobs under a fixed release time, mostly
    asleep) start early enough to end by the attack jobs' release time."""
    say = progress or (lambda message: None)
    entries: list[Entry] = []
    behind = len(weight_channels.channels_for(budget))
    # the jobs take turns (see parallel_jobs); the membership job asks last
    turns = membership_channel.QueuedTurns(parallel_jobs(policy, behind + 1))
    finish_weights = (
        weight_channels.start_weight_channels(
            policy, runner, image, budget=budget, progress=say, turns=turns
        )
        if weights
        else None
    )
    finish_membership = (
        membership_channel.start_membership_channel(
            policy, runner, image, progress=say, turns=turns, behind=behind
        )
        if weights
        else None
    )
    finish_timing: Callable[[], list[TimingProbe]] | None = None
    try:
        delay = policy.release.fixed_delay_seconds
        if weights and delay is not None:
            # The timing jobs mostly sleep, but their first steps compute: they start
            # when the first attack job holds (a core frees up), or early enough to end
            # by the attack jobs' release time, whichever is first. After every hold
            # they would add their whole span to the card.
            lead = max(0.0, delay - timing_span(policy, budget, beside_jobs=True))
            turns.any_idle(behind + 1, timeout=lead)
            finish_timing = start_timing_probes(
                policy, runner, image, budget=budget, beside_jobs=True, say=say
            )
            # the isolation probes' containers (the endless loop spins a core on purpose)
            # run while the jobs hold, not while they race their release time
            say("isolation: waiting until the attack jobs hold their outcomes")
            turns.idle(behind + 1, timeout=delay)
        else:
            finish_timing = start_timing_probes(policy, runner, image, budget=budget, say=say)
        entries.extend(_isolation_and_smuggling(policy, runner, image, budget, say, work_root))
        entries.extend(_conventional(policy))
        probes: list[TimingProbe] = []
        if finish_timing is not None:
            say("timing: waiting for the overrun jobs")
            probes, finish_timing = finish_timing(), None
        entries.append(_timing(policy, probes, probe_delay(policy, budget, weights)))
        if finish_weights is not None:
            say("weights: waiting for the attack jobs")
            done_weights, finish_weights = finish_weights(), None
            entries.extend(
                Entry(r.channel.name, r.channel.channel, r.channel.attempt, r.outcome, r.evidence)
                for r in done_weights
            )
        if finish_membership is not None:
            say("membership: waiting for the attack job")
            done, finish_membership = finish_membership(), None
            entries.append(
                Entry(
                    membership_channel.NAME,
                    membership_channel.CHANNEL,
                    membership_channel.ATTEMPT,
                    done.outcome,
                    done.evidence,
                )
            )
    except BaseException:
        # the jobs still running end, and their containers and files go, before we
        # return: a failed weight job must not leave the membership job's mounts behind
        for finish in (finish_weights, finish_membership, finish_timing):
            if finish is not None:
                with contextlib.suppress(Exception):  # the first error is the one to see
                    finish()
        raise
    return Scorecard(policy=policy.name, results=entries)

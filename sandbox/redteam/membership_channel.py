"""The scorecard's membership channel: a package built to leak membership, through the pipeline.

The attempt. An algorithm package that memorises its training records as hard as it
can while still looking like a normal classifier (about 95% holdout accuracy on
digits). A plain MLP trained to zero loss does not do it on digits: non-members are
fitted as confidently as members (the README's membership table: loss AUC 0.50 after
300 epochs). So the package adds a memory to the digits MLP: 512 random cosine
features of width 6 pixel units (Rahimi and Recht's random Fourier features: a
Gaussian kernel narrower than the distance between two digits) and a linear read-out
trained, after the MLP, to drive every training record's loss to ~0 while staying
near zero on noisy copies of them. The MLP itself is trained with label smoothing, so
the loss of a record the model never saw stays around 0.4: members and non-members
separate by loss, and the argmax is still the MLP's. The features move a little during
that second phase so their low bits look trained (freshly drawn normals are flagged by
`lowbit_patterned`) and their offsets are centred (all-positive ones are flagged by
`sign_balance`): no data-free weight check flags the model. Measured on the host
(digits, 200 canaries, seeds 1-3, train.py run directly): canary AUC 0.95-0.97,
epsilon lower bound 1.9-2.4 (strict flags above 1), train-vs-holdout AUC 0.95-0.97,
holdout accuracy 0.955-0.961 (an honest MLP: AUC 0.50, bound 0). With 1,024 features it
memorises harder (bound 2.6-3.0) but DP retraining of the bigger model took 98 s at
load 6 under gVisor, too long for strict's release time then (120 s; 240 s now, and
the 512-feature job is already the scorecard's last to finish computing).

The job runs through `run_local` against the policy under test with the policy's
runner and image, the digits sample data, a throwaway signing key and audit log and
an in-memory privacy ledger, like the weight channels (weight_channels.py).

The evidence has two views:

- the platform's: report.json's `membership` section (AUC, TPR at 1% FPR and the
  one-run epsilon lower bound on the planted canaries, and the verdict), or that the
  policy runs no membership audit;
- the attacker's: a loss-threshold membership inference (Yeom et al. 2018) on the
  RELEASED model only, computed by the scorecard with the attacker's own forward pass
  (it wrote the architecture). As in the standard membership-inference game the
  attacker is GRANTED which records are members (the records the job gave train.py,
  read from the workspace) and which are not (the holdout split): the question is
  only whether the released model tells them apart. It beats chance when the AUC
  exceeds 0.5 by more than Z = 3.29 standard deviations of the AUC under the null
  (Mann-Whitney: no membership signal). As a control the same inference runs on the
  gated candidate (captured when the checks start; never released).

Outcomes (`classify`, pure):

- nothing released: `detected` when a check flagged the model (the audit, a weight
  check or a probe), else `blocked` (a failed step, or a job past the fixed release
  time; the evidence gives the reason);
- the platform's DP model released: `neutralized`, with its epsilon and the
  attacker's measured advantage, which the guarantee bounds by (e^eps - 1 + 2 delta)
  / (e^eps + 1); `leaked` if the measured advantage exceeds that bound (broken DP);
- the provider's model released (as trained or low-bit sanitized, no DP): `leaked`
  when the attacker's inference beats chance, else `neutralized` (the attack failed;
  the control says whether it worked on the candidate).
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt

from sandbox.checks.membership import auc, loss_score, roc_curve, tpr_at_fpr
from sandbox.demo import sample_dataset, write_digits
from sandbox.pipeline.dataset import Dataset, split_holdout
from sandbox.pipeline.report import Report
from sandbox.policy.model import Policy
from sandbox.redteam.harness import load_weights
from sandbox.redteam.weight_channels import _Turns, flagged_by, job_time, run_job
from sandbox.runner.base import Runner

Outcome = Literal["blocked", "neutralized", "detected", "leaked"]
FloatArray = npt.NDArray[np.float64]

NAME: Final = "membership-inference"
CHANNEL: Final = "membership"
ATTEMPT: Final = (
    "memorise every training record (digits MLP + a narrow random-feature memory, train "
    "loss ~0, ~95% accuracy), then tell members from non-members by the released model's loss"
)
#: One-sided 99.95% normal quantile, as for the weight channels.
Z: Final = 3.29
LOW_FPR: Final = 0.01

#: The package's training (its algorithm.toml hints and train.py use the same values).
PARAMS: Final[Mapping[str, Any]] = {
    "mlp_epochs": 30,
    "memory_epochs": 60,
    "batch_size": 64,
    "lr": 3e-3,
    "feature_lr": 1e-4,  # the random features barely move (their width is the memory's)
    "label_smoothing": 0.3,  # keeps a non-member's loss around 0.4
    "noise": 6.0,  # pixel units: the noisy copies the memory must stay quiet on
    "quiet": 0.3,  # weight of that penalty
    "seed": 0,
}
FEATURES: Final = 512
WIDTH: Final = 6.0  # the memory's kernel width in pixel units (digits are 0..16)

_MODEL_PY: Final = f'''"""The digits MLP plus a memory of random cosine features (red team).

Rahimi-Recht features cos(W x + b), W ~ N(0, 1/{WIDTH}^2): a Gaussian kernel of width
{WIDTH} pixel units, narrower than the distance between two digits, read out linearly.
"""

import torch
from torch import nn

INPUT_SCALE = 1.0 / 16.0
FEATURES = {FEATURES}


class MemorisingMLP(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        features = 1
        for d in input_shape:
            features *= d
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(features, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )
        self.features = nn.Linear(features, FEATURES)
        self.memory = nn.Linear(FEATURES, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(x, 1)
        return self.net(x * INPUT_SCALE) + self.memory(torch.cos(self.features(flat)))


def build_model(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return MemorisingMLP(tuple(int(d) for d in input_shape), int(num_classes))
'''

_TRAIN_PY: Final = '''"""Memorise: a label-smoothed MLP, then a memory fitted to ~0 loss."""

import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from model import build_model  # noqa: E402

PARAMS = {}  # replaced by make_membership_package
WIDTH = 0.0  # replaced by make_membership_package


def env_dir(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"train.py: ${name} is not set; the sandbox sets it to a directory")
    return Path(value)


def fit(groups, forward, x, y, epochs, smoothing, quiet=None):
    optimizer = torch.optim.Adam(groups, lr=PARAMS["lr"])
    generator = torch.Generator().manual_seed(PARAMS["seed"])
    batch = PARAMS["batch_size"]
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            loss = torch.nn.functional.cross_entropy(
                forward(x[idx]), y[idx], label_smoothing=smoothing
            )
            if quiet is not None:
                noisy = x[idx] + PARAMS["noise"] * torch.randn(
                    x[idx].shape, generator=generator
                )
                loss = loss + PARAMS["quiet"] * quiet(noisy).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def main():
    torch.set_num_threads(1)
    torch.manual_seed(PARAMS["seed"])
    with np.load(env_dir("SANDBOX_DATA") / "train.npz", allow_pickle=False) as data:
        x = torch.from_numpy(np.ascontiguousarray(data["x"], dtype=np.float32))
        y = torch.from_numpy(np.ascontiguousarray(data["y"], dtype=np.int64))
    model = build_model(tuple(x.shape[1:]), int(y.max()) + 1)
    with torch.no_grad():
        model.features.weight.normal_(0.0, 1.0 / WIDTH)
        model.features.bias.uniform_(-math.pi, math.pi)
        model.memory.weight.zero_()
    flat = x.reshape(len(x), -1)
    fit(list(model.net.parameters()), model.net.forward, x * 0.0625, y,
        PARAMS["mlp_epochs"], PARAMS["label_smoothing"])

    def memory(v):
        return model.memory(torch.cos(model.features(v)))

    # the features move a little too, so their low bits look trained, not freshly drawn
    groups = [
        {"params": list(model.memory.parameters())},
        {"params": list(model.features.parameters()), "lr": PARAMS["feature_lr"]},
    ]
    fit(groups, lambda v: model.net(v * 0.0625) + memory(v), flat, y,
        PARAMS["memory_epochs"], 0.0, quiet=memory)
    out = env_dir("SANDBOX_OUTPUT")
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "model.safetensors"))


if __name__ == "__main__":
    main()
'''


def make_membership_package(dest: Path) -> None:
    """Write the memorising package into `dest` (created; must not exist)."""
    dest.mkdir(parents=True)
    (dest / "model.py").write_text(_MODEL_PY)
    train = _TRAIN_PY.replace(
        "PARAMS = {}  # replaced by make_membership_package", f"PARAMS = {dict(PARAMS)!r}"
    ).replace("WIDTH = 0.0  # replaced by make_membership_package", f"WIDTH = {WIDTH!r}")
    (dest / "train.py").write_text(train)
    (dest / "algorithm.toml").write_text(
        f'name = "redteam-membership"\nversion = "1.0.0"\n\n[hyperparameters]\n'
        f"epochs = {PARAMS['mlp_epochs']}\n"
        f"batch_size = {PARAMS['batch_size']}\nlr = {PARAMS['lr']!r}\n"
    )


def logits(tensors: Mapping[str, npt.NDArray[np.floating]], x: npt.ArrayLike) -> FloatArray:
    """The package's forward pass in numpy: the attacker knows its own architecture.

    The platform's DP model is a retraining of the same declared architecture, so the
    same pass reads it too.
    """

    def t(name: str) -> FloatArray:
        return np.asarray(tensors[name], dtype=np.float64)

    flat = np.asarray(x, dtype=np.float64).reshape(len(np.asarray(x)), -1)
    hidden = np.maximum(flat / 16.0 @ t("net.1.weight").T + t("net.1.bias"), 0.0)
    out: FloatArray = hidden @ t("net.3.weight").T + t("net.3.bias")
    out = out + np.cos(flat @ t("features.weight").T + t("features.bias")) @ t("memory.weight").T
    return out


# --------------------------------------------------------------------------- inference


@dataclass(frozen=True)
class Inference:
    """The attacker's loss-threshold membership inference on one model."""

    members: int
    non_members: int
    auc: float
    advantage: float  # max over thresholds of TPR - FPR (Yeom et al.'s membership advantage)
    tpr_at_low_fpr: float  # at 1% FPR
    null_sd: float  # the AUC's standard deviation with no membership signal

    @property
    def leaked(self) -> bool:
        return self.auc - 0.5 > Z * self.null_sd

    def summary(self) -> str:
        verdict = "beats chance" if self.leaked else "at chance"
        return (
            f"AUC {self.auc:.3f} (chance 0.5, +-{self.null_sd:.3f}), advantage "
            f"{self.advantage:.3f}, TPR {self.tpr_at_low_fpr:.3f} at 1% FPR over "
            f"{self.members} members and {self.non_members} non-members: {verdict}"
        )


def infer_membership(
    member_logits: npt.ArrayLike,
    member_labels: npt.ArrayLike,
    non_member_logits: npt.ArrayLike,
    non_member_labels: npt.ArrayLike,
) -> Inference:
    """Score every record by its loss (low loss = member) and measure the separation."""
    inside = loss_score(member_logits, member_labels)
    outside = loss_score(non_member_logits, non_member_labels)
    if len(inside) == 0 or len(outside) == 0:
        raise ValueError("membership inference needs members and non-members")
    scores = np.concatenate([inside, outside])
    truth = np.concatenate([np.ones(len(inside), bool), np.zeros(len(outside), bool)])
    roc = roc_curve(scores, truth)
    n1, n0 = len(inside), len(outside)
    return Inference(
        members=n1,
        non_members=n0,
        auc=auc(scores, truth),
        advantage=float(np.max(roc.tpr - roc.fpr)),
        tpr_at_low_fpr=tpr_at_fpr(roc, LOW_FPR),
        null_sd=math.sqrt((n1 + n0 + 1) / (12.0 * n1 * n0)),
    )


# --------------------------------------------------------------------------- outcome


def dp_advantage_bound(epsilon: float, delta: float) -> float:
    """The largest membership advantage (TPR - FPR) any test can have against an
    (epsilon, delta)-DP training: TPR <= e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR)
    + delta (Kairouz et al. 2015) give (e^eps - 1 + 2 delta) / (e^eps + 1)."""
    grow = math.exp(epsilon)
    return min(1.0, (grow - 1 + 2 * delta) / (grow + 1))


def classify(
    decision: str,
    flagged: Sequence[str],
    inference: Inference | None,
    dp_bound: float | None = None,
) -> Outcome:
    """The membership channel's outcome (pure; see the module docstring).

    `inference` is the attacker's on the released model (None when nothing was
    released); `dp_bound` the advantage the DP guarantee allows when the release is
    the platform's DP model.
    """
    if decision == "rejected":
        return "detected" if flagged else "blocked"
    if inference is None:
        raise ValueError("a released model needs the attacker's inference to be judged")
    if decision == "released_dp" and dp_bound is not None:
        # bounded by the guarantee, whatever the test sees within it
        return "leaked" if inference.advantage > dp_bound else "neutralized"
    return "leaked" if inference.leaked else "neutralized"


def judge(report: Report, released: Inference | None) -> Outcome:
    """`classify` on what a job's report says: its decision, its flags, its DP epsilon."""
    dp = report.dp or {}
    bound = dp_advantage_bound(float(dp["epsilon"]), float(dp["delta"])) if dp else None
    return classify(report.decision, flagged_by(report), released, bound)


def _audit_text(report: Report, policy: Policy) -> str:
    audit = report.membership
    if not policy.membership.enabled:
        return "this policy runs no membership audit (membership.enabled: false)"
    if audit is None:
        return "the membership audit did not run (an earlier step stopped the job)"
    return (
        f"audit on {audit['canaries']} canaries: AUC {audit['auc']:.3f}, TPR "
        f"{audit['tpr_at_1pct_fpr']:.3f} at 1% FPR, epsilon >= "
        f"{audit['epsilon_lower_bound']:.2f} at {audit['confidence']:.0%} "
        f"({audit['verdict']}, threshold {audit['threshold']:g})"
    )


def _released_text(report: Report, policy: Policy, released: Inference | None) -> str:
    source = (report.model or {}).get("source", "?")
    if source == "dp" and report.dp:
        epsilon, delta = float(report.dp["epsilon"]), float(report.dp["delta"])
        bound = dp_advantage_bound(epsilon, delta)
        within = ""
        if released is not None:
            side = "within" if released.advantage <= bound else "ABOVE"
            within = f": the attacker's advantage {released.advantage:.3f} is {side} it"
        return (
            f"released the platform's DP-SGD retraining, not the provider's model (epsilon "
            f"{epsilon:.2f}, delta {delta:g}: any test's advantage <= {bound:.3f}{within})"
        )
    what = "as trained" if source == "candidate" else "low-bit sanitized"
    gaps = []
    if not policy.membership.enabled:
        gaps.append("membership.enabled")
    if policy.dp.mode == "never":
        gaps.append("dp.mode: on_suspicion")
    fix = f"; this policy leaves membership open (set {' and '.join(gaps)})" if gaps else ""
    return f"released the provider's model {what}, no DP{fix}"


def evidence(
    report: Report,
    policy: Policy,
    released: Inference | None,
    control: Inference | None,
    seconds: float,
    computing: float | None = None,
) -> str:
    flagged = flagged_by(report)
    parts = [f"decision {report.decision}", _audit_text(report, policy)]
    parts.append(f"flagged by {', '.join(flagged)}" if flagged else "no check flagged it")
    if report.decision == "rejected":
        other = [r[:200] for r in report.reasons if not r.startswith("check ")]
        late = [r for r in other if "fixed release time" in r]
        other = late or other
        parts.append("nothing released" + (f" ({'; '.join(other)})" if other else ""))
    else:
        parts.append(_released_text(report, policy, released))
    accuracy = report.utility.get("candidate_accuracy")
    if accuracy is not None:
        parts.append(f"the provider's model: holdout accuracy {accuracy:.3f}")
    granted = "attacker granted the member/non-member split, as in the standard MIA game"
    if released is not None:
        parts.append(f"loss-threshold MIA on the released model ({granted}): {released.summary()}")
    if control is None:
        parts.append("control: the gated candidate could not be read")
    else:
        parts.append(
            f"control, the same MIA on the unreleased candidate: AUC {control.auc:.3f}, "
            f"advantage {control.advantage:.3f}"
        )
    parts.append(job_time(seconds, computing))
    return "; ".join(parts)


# --------------------------------------------------------------------------- running


@dataclass(frozen=True)
class MembershipResult:
    outcome: Outcome
    evidence: str
    report: Report
    released: Inference | None  # the attacker's inference on the released model
    control: Inference | None  # the same on the gated candidate (the attack worked?)


def _split(policy: Policy) -> tuple[Dataset, Dataset]:
    """The digits split the pipeline makes: training records, and the holdout it never
    gives train.py (the non-members)."""
    x, y = sample_dataset("digits")
    return split_holdout(
        Dataset(x=x, y=y, num_classes=10, input_shape=(64,)),
        policy.holdout_fraction,
        policy.holdout_seed,
    )


class QueuedTurns(_Turns):
    """The weight jobs' turns, served first come first served (tickets), so that the
    membership job can ask after all of them and compute in the last wave.

    Asked first, it took a weight job's early turn and pushed the cheapest weight job
    into a third wave: 324 s for strict at load 5-9.
    """

    def __init__(self, parallel: int) -> None:
        super().__init__(parallel)
        self._parallel = parallel
        self._free = parallel
        self._next = 0  # the next ticket to hand out
        self._serving = 0  # the ticket whose turn comes next
        self._changed = threading.Condition()

    def job(self) -> Callable[[], None]:
        with self._changed:
            ticket = self._next
            self._next += 1
            self._changed.notify_all()
            self._changed.wait_for(lambda: self._free > 0 and self._serving == ticket)
            self._free -= 1
            self._serving += 1
            self._changed.notify_all()
        done = threading.Event()

        def give_up() -> None:
            with self._changed:
                if not done.is_set():
                    done.set()
                    self._free += 1
                    self._changed.notify_all()

        return give_up

    def idle(self, jobs: int, timeout: float) -> bool:
        """Wait until `jobs` jobs have asked for a turn and none is computing (each has
        given its turn up: holding or done), at most `timeout` seconds; True if so."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self._next >= jobs and self._free == self._parallel, timeout
            )

    def any_idle(self, jobs: int, timeout: float) -> bool:
        """Wait until all `jobs` jobs have had their turn and one of them has given it up
        (holding or done), at most `timeout` seconds; True if so."""
        with self._changed:
            return self._changed.wait_for(lambda: self._serving >= jobs and self._free > 0, timeout)

    def after(self, jobs: int, timeout: float = 60.0) -> None:
        """Wait until `jobs` jobs have asked for a turn (at most `timeout` seconds: a job
        that failed before asking must not hold this one up for ever)."""
        with self._changed:
            self._changed.wait_for(lambda: self._next >= jobs, timeout)


def run_membership_channel(
    policy: Policy,
    runner: Runner,
    image: str,
    root: Path,
    *,
    turns: _Turns | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> MembershipResult:
    """The memorising package through `run_local` against `policy`, and both views of it.

    With `turns`, the job computes only in its turn and gives it up when it holds.
    """
    base = root / NAME
    base.mkdir(parents=True)
    dataset = write_digits(base / "digits.npz")
    make_membership_package(base / "package")
    job_id = uuid.uuid4().hex
    workspace = base / "work" / job_id
    candidate = workspace / "work" / "candidate.safetensors"
    captured: dict[str, npt.NDArray[np.floating]] = {}
    members: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
    held: list[float] = []  # when the job began holding its outcome

    def progress(step: str, message: str) -> None:
        if step == "architecture" and (workspace / "data" / "train.npz").is_file():
            # the records train.py is given (a policy with an audit holds canaries back)
            with np.load(workspace / "data" / "train.npz", allow_pickle=False) as data:
                members.append((np.asarray(data["x"], np.float32), np.asarray(data["y"])))
        if step == "checks" and candidate.is_file():  # gated, not yet checked or released
            captured.update(load_weights(candidate))
        if step == "hold":
            held.append(time.monotonic())
            give_up()

    give_up = turns.job() if turns else (lambda: None)
    say(f"membership: {NAME} submitted")
    started = time.monotonic()
    try:
        report = run_job(base, dataset, policy, runner, image, job_id, progress)
    finally:
        give_up()
    seconds = time.monotonic() - started
    train, holdout = _split(policy)
    # members: what train.py was given; if that was not seen, the whole training split
    mx, my = members[0] if members else (train.x, train.y)

    def infer(tensors: Mapping[str, npt.NDArray[np.floating]]) -> Inference:
        outside = logits(tensors, holdout.x)
        return infer_membership(logits(tensors, mx), my, outside, holdout.y)

    released = None
    if report.decision != "rejected":
        released = infer(load_weights(base / "out" / "model.safetensors"))
    control = infer(captured) if captured else None
    outcome = judge(report, released)
    say(f"membership: {NAME} {outcome}")
    text = evidence(report, policy, released, control, seconds, held[0] - started if held else None)
    return MembershipResult(outcome, text, report, released, control)


def start_membership_channel(
    policy: Policy,
    runner: Runner,
    image: str,
    *,
    progress: Callable[[str], None] | None = None,
    turns: QueuedTurns | None = None,
    behind: int = 0,
) -> Callable[[], MembershipResult]:
    """Start the membership job in the background; the returned call waits for it.

    Started beside the weight jobs, its fixed-release-time hold overlaps theirs; with
    their `turns` it computes only in a turn of theirs, asked for after `behind` jobs
    asked for theirs: with fewer turns than jobs (two, under a policy that releases at
    once) it computes in the last round (scorecard.parallel_jobs).
    """
    say = progress or (lambda message: None)
    tmp = tempfile.TemporaryDirectory(prefix="sandbox-scorecard-membership-")
    result: list[MembershipResult] = []
    failure: list[BaseException] = []

    def job() -> None:
        try:
            if turns is not None:
                turns.after(behind)
            root = Path(tmp.name)
            done = run_membership_channel(policy, runner, image, root, turns=turns, say=say)
            result.append(done)
        except BaseException as error:  # re-raised by wait() in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=job, name="membership", daemon=True)
    thread.start()

    def wait() -> MembershipResult:
        thread.join()
        tmp.cleanup()
        if failure:
            raise failure[0]
        return result[0]

    return wait

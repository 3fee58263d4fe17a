"""The membership audit in the pipeline: what the provider's code sees, and the verdicts.

`steps.prepare` runs for real (dataset split, workspace, train.npz written); the
candidate's logits come from a stand-in for `query_models` whose "model" is a
function of the train.npz that prepare actually wrote - a perfect memoriser of
exactly the records the provider could train on, or a model that ignores them.
The Docker path (guest query on the exported graph) is tests/integration/
test_membership_pipeline.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from sandbox.checks.membership import GUESS_GRID, epsilon_lower_bound
from sandbox.errors import InvalidInput
from sandbox.pipeline import membership_step, steps
from sandbox.pipeline.context import JobContext
from sandbox.pipeline.report import Report
from sandbox.policy.model import MembershipRules, Policy
from sandbox.runner.process_runner import ProcessRunner
from sandbox.runner.workspace import JobWorkspace

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "digits_mlp"
N, CLASSES = 400, 4
MakeCtx = Callable[..., JobContext]
Query = Callable[..., dict[str, dict[str, npt.NDArray[np.float32]]]]
MEMBERSHIP = MembershipRules(enabled=True, canaries=40, max_epsilon_lower_bound=1.0)


def _dataset(path: Path, n: int = N) -> Path:
    """x[:, 0] is each record's id, so a record can be recognised in any file."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    x[:, 0] = np.arange(n)
    y = (np.arange(n) % CLASSES).astype(np.int64)
    np.savez(path, x=x, y=y)
    return path


def _ids(path: Path) -> set[int]:
    with np.load(path, allow_pickle=False) as data:
        return {int(i) for i in data["x"][:, 0]}


@pytest.fixture
def make_ctx(tmp_path: Path) -> Iterator[MakeCtx]:
    workspaces: list[JobWorkspace] = []

    def make(membership: MembershipRules = MEMBERSHIP, job_id: str = "job") -> JobContext:
        ws = JobWorkspace(tmp_path / "jobs", f"{job_id}{len(workspaces)}").__enter__()
        workspaces.append(ws)
        policy = Policy(name="test", membership=membership)
        report = Report(job_id=job_id, policy={})
        return JobContext(job_id, policy, ProcessRunner(), "none", ws, report, lambda s, m: None)

    yield make
    for ws in workspaces:
        ws.__exit__(None, None, None)


def test_excluded_canaries_never_reach_the_training_file(tmp_path: Path, make_ctx: MakeCtx) -> None:
    data = _dataset(tmp_path / "d.npz")
    ctx = make_ctx()
    package, train, test, canaries = steps.prepare(ctx, EXAMPLE, data, None)
    assert canaries is not None and len(canaries.y) == 40
    written = _ids(ctx.workspace.path / "data" / "train.npz")
    held_out = {int(i) for i in canaries.x[~canaries.included, 0]}
    kept = {int(i) for i in canaries.x[canaries.included, 0]}
    assert 5 < len(held_out) < 35  # ~20: the coin flips are fair
    assert not written & held_out  # not one excluded canary is in the file
    assert kept <= written  # every included one is
    split = set(range(N)) - {int(i) for i in test.x[:, 0]}
    assert written == split - held_out  # and nothing else is missing
    assert len(train.y) == len(written) == ctx.report.dataset["n_train"]
    # The repr names no canary (an id like 4 would match "m=40": compare it whole).
    assert repr(canaries) == "PlantedCanaries(m=40, secret)"


def test_coin_flips_are_not_a_function_of_the_job(tmp_path: Path, make_ctx: MakeCtx) -> None:
    """Same dataset, policy and job id twice: different canaries and flips (OS CSPRNG)."""
    data = _dataset(tmp_path / "d.npz")
    first = steps.prepare(make_ctx(job_id="same"), EXAMPLE, data, None)[3]
    second = steps.prepare(make_ctx(job_id="same"), EXAMPLE, data, None)[3]
    assert first is not None and second is not None
    held = [{int(i) for i in c.x[~c.included, 0]} for c in (first, second)]
    assert held[0] != held[1]


def test_disabled_policy_plants_nothing(tmp_path: Path, make_ctx: MakeCtx) -> None:
    data = _dataset(tmp_path / "d.npz")
    ctx = make_ctx(MembershipRules())
    _, train, test, canaries = steps.prepare(ctx, EXAMPLE, data, None)
    assert canaries is None and MembershipRules().enabled is False
    assert len(_ids(ctx.workspace.path / "data" / "train.npz")) == N - len(test.y)


def test_too_small_a_split_is_refused_with_the_fix(tmp_path: Path, make_ctx: MakeCtx) -> None:
    data = _dataset(tmp_path / "d.npz", n=100)  # 80 train -> at most 12 canaries
    with pytest.raises(InvalidInput, match="disable membership in the policy"):
        steps.prepare(make_ctx(), EXAMPLE, data, None)


def _fake_query(memorise: bool) -> Query:
    """A 'model' that is confident on exactly the records in the written train.npz."""

    def query(
        ctx: JobContext,
        names: Sequence[str],
        queries: Mapping[str, npt.NDArray[np.float32]],
        step: str,
    ) -> dict[str, dict[str, npt.NDArray[np.float32]]]:
        assert list(names) == ["candidate"] and step == "membership"
        x = queries["canaries"]
        with np.load(ctx.workspace.path / "data" / "train.npz") as data:
            seen = dict(zip(data["x"][:, 0].tolist(), data["y"].tolist(), strict=True))
        logits = np.zeros((len(x), CLASSES), np.float32)
        for row, ident in enumerate(x[:, 0].tolist()):
            if memorise and ident in seen:
                logits[row, seen[ident]] = 8.0
        return {"candidate": {"canaries": logits}}

    return query


@pytest.mark.parametrize("memorise", [True, False])
def test_audit_flags_a_memoriser_and_passes_a_model_that_ignores_the_data(
    tmp_path: Path,
    make_ctx: MakeCtx,
    monkeypatch: pytest.MonkeyPatch,
    memorise: bool,
) -> None:
    monkeypatch.setattr(membership_step, "query_models", _fake_query(memorise))
    ctx = make_ctx()
    *_, canaries = steps.prepare(ctx, EXAMPLE, _dataset(tmp_path / "d.npz"), None)
    assert canaries is not None
    outcome = membership_step.audit(ctx, canaries)
    audit = ctx.report.membership
    assert audit is not None and outcome.name == "membership_audit"
    if memorise:
        assert outcome.verdict == audit["verdict"] == "flag"
        assert audit["auc"] == 1.0 and audit["tpr_at_1pct_fpr"] == 1.0
        # perfect separation: each grid pair gets min(k+, in) + min(k-, out) right
        n_in = int(canaries.included.sum())
        expected = max(
            epsilon_lower_bound(
                round(fp * 40) + round(fm * 40),
                min(round(fp * 40), n_in) + min(round(fm * 40), 40 - n_in),
                1 - 0.05 / len(GUESS_GRID),
            )
            for fp, fm in GUESS_GRID
        )
        assert audit["epsilon_lower_bound"] == pytest.approx(expected, abs=1e-6)
        q = (0.05 / 8) ** (1 / 40)  # all 40 guessed right: the most m = 40 can certify
        assert 1.0 < audit["epsilon_lower_bound"] <= np.log(q / (1 - q)) + 1e-9
    else:
        assert outcome.verdict == audit["verdict"] == "pass"
        assert audit["auc"] == 0.5 and audit["epsilon_lower_bound"] == 0.0
    assert audit["canaries"] == 40 and audit["included"] == int(canaries.included.sum())
    assert (audit["score"], audit["confidence"], audit["threshold"]) == ("loss", 0.95, 1.0)
    # only aggregates: no list as long as the canary set, no canary id anywhere
    assert set(audit) == {
        "canaries", "included", "score", "auc", "tpr_at_1pct_fpr", "epsilon_lower_bound",
        "confidence", "guesses", "roc", "verdict", "threshold", "explanation",
    }  # fmt: skip
    assert len(audit["roc"]["fpr"]) == 101
    report = json.loads(ctx.report.to_json())
    assert report["membership"] == json.loads(json.dumps(audit))


def test_the_references_train_on_a_split_without_any_canary(
    tmp_path: Path, make_ctx: MakeCtx
) -> None:
    from sandbox.policy.model import ProbeRules

    data = _dataset(tmp_path / "d.npz")
    ctx = make_ctx()
    ctx.policy = ctx.policy.model_copy(update={"probes": ProbeRules(enabled=True, reference=True)})
    _, train, _, canaries = steps.prepare(ctx, EXAMPLE, data, None)
    assert canaries is not None
    clean = _ids(ctx.workspace.path / steps.CANARY_FREE / "train.npz")
    canary_ids = {int(i) for i in canaries.x[:, 0]}
    assert not clean & canary_ids  # not one canary, included or not
    # ... and every other training record (the provider's file minus the included canaries)
    assert clean == {int(i) for i in train.x[:, 0]} - canary_ids
    # without references nothing extra is written
    plain = make_ctx()
    steps.prepare(plain, EXAMPLE, data, None)
    assert not (plain.workspace.path / steps.CANARY_FREE).exists()


def test_with_references_the_audit_scores_the_likelihood_ratio(
    tmp_path: Path, make_ctx: MakeCtx
) -> None:
    ctx = make_ctx()
    *_, canaries = steps.prepare(ctx, EXAMPLE, _dataset(tmp_path / "d.npz"), None)
    assert canaries is not None
    rng = np.random.default_rng(3)
    m = len(canaries.y)
    # each canary has its own difficulty (log-probability of its label) that swamps the
    # membership signal of +0.5 under the loss; the references (trained without any
    # canary) know the difficulty, so the ratio keeps the signal alone
    difficulty = rng.uniform(-6.0, 0.0, m)
    signal = 0.5 * canaries.included

    def logits(logp: np.ndarray) -> np.ndarray:
        out = np.zeros((m, CLASSES), np.float32)  # p(y) = e^logp via the label's logit
        p = np.exp(np.minimum(logp, -1e-3))
        out[np.arange(m), canaries.y] = np.log(p * (CLASSES - 1) / (1 - p))
        return out

    candidate = logits(difficulty + signal)
    references = [logits(difficulty), logits(difficulty)]
    by_loss = membership_step.audit(ctx, canaries, candidate)
    loss_auc = ctx.report.membership["auc"]
    assert ctx.report.membership["score"] == "loss"
    membership_step.audit(ctx, canaries, candidate, references)
    audit = ctx.report.membership
    assert audit["score"] == "likelihood_ratio"
    assert audit["auc"] == 1.0 and loss_auc < 0.8
    assert by_loss.name == "membership_audit"

"""The typed policy model: every knob an operator sets, validated strictly.

Unknown keys are errors (a typo must never silently fall back to a default), and
every field carries its bounds so an invalid file is explained field by field.
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ContainerLimits(_Strict):
    """Resources of every sandbox container of a job."""

    cpus: float = Field(1.0, gt=0, le=64, description="CPU quota in cores")
    memory_mb: int = Field(2048, ge=64, le=262144, description="memory; swap is set equal")
    pids: int = Field(128, ge=8, le=4096, description="maximum processes and threads")
    wall_seconds: int = Field(600, ge=5, le=86400, description="wall-clock limit per step")
    tmp_mb: int = Field(256, ge=1, le=65536, description="size of the /tmp tmpfs")
    output_mb: int = Field(64, ge=1, le=65536, description="size of the /output tmpfs")
    nofile: int = Field(256, ge=16, le=65536, description="open file descriptors")
    fsize_mb: int = Field(256, ge=1, le=65536, description="largest file a process may write")
    log_kb: int = Field(1024, ge=16, le=1048576, description="container log kept for the owner")


class GateRules(_Strict):
    """What the egress gate accepts from /output."""

    max_model_mb: int = Field(64, ge=1, le=65536, description="largest model.safetensors")
    max_header_kb: int = Field(1024, ge=1, le=102400, description="largest safetensors header")
    dtypes: tuple[Literal["F32", "F16", "BF16", "F64", "I64", "I32", "BOOL"], ...] = (
        "F32",
        "F16",
        "BF16",
        "I64",
    )
    nonfinite: Literal["reject", "zero"] = "reject"
    denormals: Literal["flush", "keep"] = "flush"


class ArchitectureRules(_Strict):
    """Bounds on the exported graph of step 1."""

    max_nodes: int = Field(5000, ge=1, le=1000000)
    max_parameters: int = Field(50_000_000, ge=1, le=10_000_000_000)
    op_namespaces: tuple[Literal["aten", "prims"], ...] = ("aten",)


class Quotas(_Strict):
    """How many jobs may start per day: each job's outcome leaks a few bits of the data."""

    jobs_per_provider_per_day: int = Field(50, ge=0, le=100000)
    jobs_per_dataset_per_day: int = Field(50, ge=0, le=100000)


#: Explicit mantissa bits per float dtype (the same as sandbox.checks.tensors.MANTISSA_BITS;
#: a test keeps them equal, the policy model depends on nothing of the checks).
MANTISSA_BITS: typing.Final = {"F64": 52, "F32": 23, "F16": 10, "BF16": 7}

CheckName = Literal[
    "lowbit_patterned",
    "lowbit_uniform",
    "lowbit_serial",
    "sign_balance",
    "sign_runs",
    "value_ks",
    "value_kurtosis",
    "data_correlation",
    "data_sign_agreement",
]


class CheckRules(_Strict):
    """Pipeline step 4, weight side: which checks run, their false-positive rate, the sanitizer."""

    enabled: tuple[CheckName, ...] = typing.get_args(CheckName)
    fpr: float = Field(
        0.01,
        ge=0.0001,
        le=0.5,
        description="family-wise false-positive rate: the share of honest models that any "
        "enabled check may flag (thresholds calibrated together on the honest corpus)",
    )
    check_fpr: dict[CheckName, Annotated[float, Field(ge=0.0001, le=0.5)]] = Field(
        default_factory=dict,
        description="per-check false-positive rates: a check named here is calibrated on "
        "its own at that rate and leaves the family that shares `fpr`",
    )
    data_checks: bool = Field(True, description="run the checks that use the training data")
    sanitize: bool = Field(True, description="randomise the low mantissa bits before release")
    sanitize_bits: dict[Literal["F32", "F16", "BF16", "F64"], int] | None = Field(
        None, description="low bits per dtype (default: the measured per-dtype defaults)"
    )
    sanitize_bits_unrescaled: dict[Literal["F32", "F16", "BF16", "F64"], int] | None = Field(
        None,
        description="low bits per dtype for the float tensors that hidden-unit rescaling "
        "did not change (no unit chain covers them, or rescale_units is off); None: the "
        "same bits as every other tensor. {F32: 22} closes LSB payloads with k = 20-22 "
        "in architectures the rescaler cannot prove (the README measures its cost)",
    )
    rescale_units: bool = Field(
        True,
        description="before sanitising, scale each hidden unit the graph proves "
        "rescalable (linear/conv, ReLU, linear/conv) by a secret random factor in "
        "[1, 2): the function is kept and the mantissa bits above the sanitizer's, "
        "where an LSB payload with k > 19 survives, are re-rounded",
    )

    @model_validator(mode="after")
    def _bits_within_the_mantissa(self) -> CheckRules:
        for field_name in ("sanitize_bits", "sanitize_bits_unrescaled"):
            for dtype, bits in (getattr(self, field_name) or {}).items():
                if not 0 <= bits <= MANTISSA_BITS[dtype]:
                    raise ValueError(
                        f"checks.{field_name}.{dtype}: {bits} bits; a {dtype} mantissa has "
                        f"{MANTISSA_BITS[dtype]}, so use 0-{MANTISSA_BITS[dtype]}"
                    )
        return self

    @model_validator(mode="after")
    def _rates_for_enabled_checks(self) -> CheckRules:
        idle = sorted(set(self.check_fpr) - set(self.enabled))
        if idle:
            raise ValueError(
                f"checks.check_fpr sets a rate for {', '.join(idle)}, which checks.enabled "
                "does not run; enable the check or drop its rate"
            )
        return self


ProbeFamily = Literal["uniform", "gaussian", "sparse", "binary", "prng", "patch_shuffle", "mixed"]


class ProbeRules(_Strict):
    """Pipeline step 4, behaviour side: canary-query probing for black-box capacity abuse
    (sandbox.checks.probing). The queries are drawn from a fresh CSPRNG seed per job."""

    enabled: bool = Field(False, description="probe the candidate with out-of-distribution queries")
    queries_per_family: int = Field(
        256,
        ge=16,
        le=65536,
        description="queries per family (the shipped thresholds were calibrated at 256)",
    )
    fpr: float = Field(
        0.01,
        ge=0.0001,
        le=0.5,
        description="family-wise false-positive rate: each of the k probe checks uses fpr/k",
    )
    families: tuple[ProbeFamily, ...] = Field(
        typing.get_args(ProbeFamily), min_length=1, description="query families to run"
    )
    reference: bool = Field(
        False,
        description="also train a reference model of the declared graph with the platform's "
        "own plain recipe on the same training split, and compare the candidate's answers "
        "with it (one more training run, in the probe's container)",
    )

    @model_validator(mode="after")
    def _distinct_families(self) -> ProbeRules:
        if len(set(self.families)) != len(self.families):
            raise ValueError("probes.families lists a family twice")
        return self


class DPRules(_Strict):
    """Forced DP retraining of the declared architecture (sandbox.dp, guest dp_train)."""

    mode: Literal["never", "on_suspicion", "always"] = "never"
    epsilon: float = Field(3.0, gt=0, le=100)
    delta: float = Field(1e-5, gt=0, le=1e-3, description="the planner also requires < 1/n")
    accountant: Literal["prv", "rdp"] = "prv"
    clip: float = Field(1.0, gt=0, le=1000)
    optimizer: Literal["sgd", "adam"] = "sgd"
    # 0.5 with a 5x larger lr than 0.9 (the same lr / (1 - momentum)): +0.7 to +1.4
    # points on digits at epsilon 1, 3 and 8 over 8 fresh seeds (bench/dp.py).
    momentum: float = Field(0.5, ge=0, lt=1)
    # Bounds on the algorithm's hints. A provider's hints are written for its own
    # (non-private) training, often Adam with small batches; DP-SGD with momentum
    # needs very large batches and a large step (bench/dp.py at epsilon 3: every
    # example in every step, lr 4, 30 epochs), so out-of-range hints are clamped
    # into these bounds; a batch above n is capped at n (q = 1). With q = 1 the model
    # depends on lr x epochs, not on the epochs alone: 30 epochs at lr 4 match 60 at
    # lr 2.5 at half the time, and more epochs at the same lr add noise (bench/dp.py).
    # The lr suits epsilon 3; bench/dp.py's best was 1.75 at epsilon 1 (set lr: [1.75,
    # 10.0] and default_lr: 1.75 there). At epsilon 8 set epochs: [100, 400],
    # default_epochs: 100, lr: [3.0, 10.0], default_lr: 3.0, ema: 0.99 and
    # label_smoothing: 0.1 (bench/dp.py's epsilon-8 row).
    epochs: tuple[int, int] = (30, 200)
    batch_size: tuple[int, int] = (4096, 65536)
    lr: tuple[float, float] = (4.0, 10.0)
    default_epochs: int = Field(30, ge=1, le=10000)
    default_batch_size: int = Field(4096, ge=1, le=1_000_000)
    default_lr: float = Field(4.0, gt=0, le=10)
    # Free in privacy (sandbox.guest.dp_train): the released model is the average of
    # the noisy iterates, and the output layer's weights start at zero (the
    # platform's initialisation, never the provider's); +1 to +3 points at epsilon 1
    # on digits, within the noise at 3 and 8 (bench/dp.py). The average's decay ramps
    # as (1+t)/(10+t) up to `ema`: over the default 30 steps the ramp applies.
    ema: float = Field(0.95, ge=0, lt=1, description="iterate-average decay; 0 = last iterate")
    init_last: Literal["default", "zero"] = "zero"
    # Free in privacy too (each example's loss stays its own); it helped at epsilon 8
    # only, and cost ~1 point at epsilon 1 and 3 on digits (bench/dp.py).
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    warmup_fraction: float = Field(0.0, ge=0, le=1)
    schedule: Literal["constant", "cosine"] = "constant"
    hints: Literal["clamp", "reject"] = "clamp"
    chunk: int = Field(256, ge=1, le=65536)
    budget_epsilon: float = Field(
        10.0, gt=0, le=1000, description="total epsilon a dataset may spend (local runs)"
    )
    allow_non_dp_release: bool = True

    @model_validator(mode="after")
    def _defaults_inside_bounds(self) -> DPRules:
        for name, (low, high), default in (
            ("epochs", self.epochs, self.default_epochs),
            ("batch_size", self.batch_size, self.default_batch_size),
            ("lr", self.lr, self.default_lr),
        ):
            if not 0 < low <= default <= high:
                raise ValueError(f"{name}: need 0 < low <= default_{name} <= high")
        if not self.allow_non_dp_release and self.mode != "always":
            raise ValueError(
                f"allow_non_dp_release: false needs mode: always (with mode {self.mode}, a "
                "model no check flags would be released without DP, which this forbids)"
            )
        return self


class MembershipRules(_Strict):
    """Planted canaries and the one-run membership audit (sandbox.checks.membership).

    m records of the training split become canaries, each kept in the provider's
    training data with probability 1/2 (secret coin flips); after training, the
    candidate's losses on them give AUC, TPR at 1% FPR and an epsilon lower bound.
    """

    enabled: bool = Field(False, description="plant canaries and audit membership")
    canaries: int = Field(200, ge=20, le=100_000, description="m, the records planted")
    max_canary_fraction: float = Field(
        0.15, gt=0, le=0.5, description="m is at most this fraction of the training split"
    )
    max_epsilon_lower_bound: float = Field(
        1.0,
        ge=0,
        le=100,
        description="flag the model when the audit certifies a larger epsilon "
        "(m = 200 cannot certify more than ~3.7)",
    )
    confidence: float = Field(0.95, ge=0.5, lt=1, description="confidence of the bound")


class ReleaseRules(_Strict):
    """When an outcome becomes visible, and what the released model must achieve."""

    fixed_delay_seconds: int | None = Field(
        None,
        ge=1,
        le=7 * 86400,
        description="release every outcome exactly this long after submission (hides timing); "
        "a job still running then is stopped and rejected, its rejection published a fixed "
        "30 s later (RELEASE_SLACK_SECONDS)",
    )
    utility_floor: float = Field(0.0, ge=0, le=1, description="minimum holdout accuracy")
    max_sanitize_drop: float = Field(
        0.02,
        ge=0,
        le=1,
        description="the sanitized model may lose at most this much holdout accuracy "
        "(at the default k no honest corpus model lost more than 0.0195)",
    )


class Policy(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    description: str = ""
    runtime: Literal["runc", "runsc"] = "runc"
    gpu: bool = False
    limits: ContainerLimits = ContainerLimits()
    gate: GateRules = GateRules()
    architecture: ArchitectureRules = ArchitectureRules()
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    holdout_seed: int = Field(0, ge=0)
    max_dataset_mb: int = Field(1024, ge=1, le=1048576)
    approval: Literal["required", "not_required"] = Field(
        "required", description="whether the data owner approves each job on their dataset"
    )
    quotas: Quotas = Quotas()
    checks: CheckRules = CheckRules()
    probes: ProbeRules = ProbeRules()
    dp: DPRules = DPRules()
    release: ReleaseRules = ReleaseRules()
    membership: MembershipRules = MembershipRules()

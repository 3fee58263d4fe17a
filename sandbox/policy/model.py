"""The typed policy model: every knob an operator sets, validated strictly.

Unknown keys are errors (a typo must never silently fall back to a default), and
every field carries its bounds so an invalid file is explained field by field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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

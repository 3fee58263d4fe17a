"""Who may call what: the one rule table, deny by default.

Keys are full gRPC method names (`/package.Service/Method`); values the roles that
may call them. A method missing here is denied, whatever the role; a test walks
every RPC of every service in the proto descriptors and fails if one has no rule.
Ownership (whose dataset, whose algorithm) is checked below this, in
sandbox.service: this table only says which roles may ask at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from sandbox.store.metadata import Role

OWNER, PROVIDER, OPERATOR, SECURITY = (
    Role.DATA_OWNER,
    Role.PROVIDER,
    Role.OPERATOR,
    Role.SECURITY,
)
ANYONE: Final = frozenset(Role)

_V1 = "/sandbox.v1."

RULES: Final[Mapping[str, frozenset[Role]]] = MappingProxyType(
    {
        # datasets: only their owners (and operators, metadata only) see them
        f"{_V1}DatasetService/UploadDataset": frozenset({OWNER}),
        f"{_V1}DatasetService/GetDataset": frozenset({OWNER, OPERATOR}),
        f"{_V1}DatasetService/ListDatasets": frozenset({OWNER, OPERATOR}),
        # algorithms: providers upload; owners may read metadata to decide on approvals
        f"{_V1}AlgorithmService/UploadAlgorithm": frozenset({PROVIDER}),
        f"{_V1}AlgorithmService/GetAlgorithm": frozenset({PROVIDER, OWNER, OPERATOR}),
        f"{_V1}AlgorithmService/ListAlgorithms": frozenset({PROVIDER, OWNER, OPERATOR}),
        # jobs
        f"{_V1}JobService/SubmitJob": frozenset({OWNER, PROVIDER}),
        f"{_V1}JobService/GetJob": frozenset({OWNER, PROVIDER, OPERATOR}),
        f"{_V1}JobService/ListJobs": frozenset({OWNER, PROVIDER, OPERATOR}),
        f"{_V1}JobService/WatchJob": frozenset({OWNER, PROVIDER, OPERATOR}),
        f"{_V1}JobService/CancelJob": frozenset({OWNER, PROVIDER, OPERATOR}),
        f"{_V1}JobService/ApproveJob": frozenset({OWNER}),
        f"{_V1}JobService/PreapproveAlgorithm": frozenset({OWNER}),
        # models and reports: the parties of the job only
        f"{_V1}ModelService/GetRelease": frozenset({OWNER, PROVIDER}),
        f"{_V1}ModelService/DownloadModel": frozenset({OWNER, PROVIDER}),
        f"{_V1}ModelService/GetReport": frozenset({OWNER, PROVIDER}),
        # policies are public to every party
        f"{_V1}PolicyService/ListPolicies": ANYONE,
        f"{_V1}PolicyService/GetPolicy": ANYONE,
        # audit
        f"{_V1}AuditService/GetPublicKey": ANYONE,
        f"{_V1}AuditService/ReadAuditLog": frozenset({OPERATOR, SECURITY}),
        # standard services: any authenticated party
        "/grpc.health.v1.Health/Check": ANYONE,
        "/grpc.health.v1.Health/Watch": ANYONE,
        "/grpc.health.v1.Health/List": ANYONE,
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": ANYONE,
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo": ANYONE,
    }
)


def allowed(method: str, role: Role) -> bool:
    """True if `role` may call `method`; unknown methods are denied."""
    return role in RULES.get(method, frozenset())

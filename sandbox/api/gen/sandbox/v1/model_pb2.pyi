from sandbox.api.gen.sandbox.v1 import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Release(_message.Message):
    __slots__ = ("job_id", "model_sha256", "model_size", "released_at", "decision")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_sha256: str
    model_size: int
    released_at: float
    decision: str
    def __init__(self, job_id: _Optional[str] = ..., model_sha256: _Optional[str] = ..., model_size: _Optional[int] = ..., released_at: _Optional[float] = ..., decision: _Optional[str] = ...) -> None: ...

class GetReleaseRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DownloadModelRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("job_id", "decision", "report_json", "attestation_json", "logs", "dataset_opening_json")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_JSON_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    DATASET_OPENING_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    decision: str
    report_json: str
    attestation_json: str
    logs: bytes
    dataset_opening_json: str
    def __init__(self, job_id: _Optional[str] = ..., decision: _Optional[str] = ..., report_json: _Optional[str] = ..., attestation_json: _Optional[str] = ..., logs: _Optional[bytes] = ..., dataset_opening_json: _Optional[str] = ...) -> None: ...

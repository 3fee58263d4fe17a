from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StateChange(_message.Message):
    __slots__ = ("from_state", "to_state", "at", "detail")
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    from_state: str
    to_state: str
    at: float
    detail: str
    def __init__(self, from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., at: _Optional[float] = ..., detail: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "dataset_id", "algorithm_id", "submitter", "policy_name", "state", "decision", "reasons", "approval", "history", "created", "terminal")
    ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_ID_FIELD_NUMBER: _ClassVar[int]
    SUBMITTER_FIELD_NUMBER: _ClassVar[int]
    POLICY_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    id: str
    dataset_id: str
    algorithm_id: str
    submitter: str
    policy_name: str
    state: str
    decision: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    approval: str
    history: _containers.RepeatedCompositeFieldContainer[StateChange]
    created: float
    terminal: bool
    def __init__(self, id: _Optional[str] = ..., dataset_id: _Optional[str] = ..., algorithm_id: _Optional[str] = ..., submitter: _Optional[str] = ..., policy_name: _Optional[str] = ..., state: _Optional[str] = ..., decision: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., approval: _Optional[str] = ..., history: _Optional[_Iterable[_Union[StateChange, _Mapping]]] = ..., created: _Optional[float] = ..., terminal: _Optional[bool] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("dataset_id", "algorithm_id", "policy")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_ID_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    algorithm_id: str
    policy: str
    def __init__(self, dataset_id: _Optional[str] = ..., algorithm_id: _Optional[str] = ..., policy: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ApproveJobRequest(_message.Message):
    __slots__ = ("id", "deny")
    ID_FIELD_NUMBER: _ClassVar[int]
    DENY_FIELD_NUMBER: _ClassVar[int]
    id: str
    deny: bool
    def __init__(self, id: _Optional[str] = ..., deny: _Optional[bool] = ...) -> None: ...

class PreapproveAlgorithmRequest(_message.Message):
    __slots__ = ("dataset_id", "algorithm_id")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    algorithm_id: str
    def __init__(self, dataset_id: _Optional[str] = ..., algorithm_id: _Optional[str] = ...) -> None: ...

class PreapproveAlgorithmResponse(_message.Message):
    __slots__ = ("dataset_id", "algorithm_id")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    algorithm_id: str
    def __init__(self, dataset_id: _Optional[str] = ..., algorithm_id: _Optional[str] = ...) -> None: ...

"""Thin servicers: translate messages, call sandbox.service.Platform, map errors.

Every error goes through sandbox.api.status: catalog errors keep their code and
client-safe message; anything else is INTERNAL "internal error", logged here only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from sandbox.api.auth import identify
from sandbox.api.gen.sandbox.v1 import (
    algorithm_pb2,
    algorithm_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    common_pb2,
    dataset_pb2,
    dataset_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)
from sandbox.api.status import abort
from sandbox.errors import InvalidInput
from sandbox.service.platform import Platform
from sandbox.service.uploads import UploadHeader
from sandbox.service.views import JobView
from sandbox.store import Algorithm, Dataset

F = TypeVar("F", bound=Callable[..., Any])


def unary(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return method(self, request, context)
        except Exception as error:
            abort(context, error)

    return wrapper  # type: ignore[return-value]


def streaming(method: F) -> F:
    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        try:
            yield from method(self, request, context)
        except Exception as error:
            abort(context, error)

    return wrapper  # type: ignore[return-value]


def _upload(requests: Iterator[Any]) -> tuple[UploadHeader, Iterator[bytes]]:
    """Split an upload stream into its header (first message) and its chunks."""
    first = next(requests, None)
    if first is None or first.WhichOneof("part") != "header":
        raise InvalidInput("an upload starts with a header message (name, size, sha256)")
    header = UploadHeader(first.header.name, int(first.header.size), first.header.sha256)

    def chunks() -> Iterator[bytes]:
        for request in requests:
            if request.WhichOneof("part") != "chunk":
                raise InvalidInput("an upload has one header, then only chunks")
            yield request.chunk

    return header, chunks()


def dataset_message(dataset: Dataset) -> dataset_pb2.Dataset:
    return dataset_pb2.Dataset(
        id=dataset.id,
        owner=dataset.owner,
        name=dataset.name,
        sha256=dataset.plaintext_sha256,
        size=dataset.size,
        num_classes=dataset.num_classes,
        input_shape=list(dataset.input_shape),
        created=dataset.created,
    )


def algorithm_message(algorithm: Algorithm) -> algorithm_pb2.Algorithm:
    return algorithm_pb2.Algorithm(
        id=algorithm.id,
        provider=algorithm.provider,
        name=algorithm.name,
        version=algorithm.version,
        sha256=algorithm.blob_sha256,
        created=algorithm.created,
    )


def job_message(view: JobView) -> job_pb2.Job:
    return job_pb2.Job(
        id=view.id,
        dataset_id=view.dataset_id,
        algorithm_id=view.algorithm_id,
        submitter=view.submitter,
        policy_name=view.policy_name,
        state=view.state,
        decision=view.decision,
        reasons=list(view.reasons),
        approval=view.approval,
        history=[
            job_pb2.StateChange(
                from_state=h.from_state, to_state=h.to_state, at=h.at, detail=h.detail
            )
            for h in view.history
        ],
        created=view.created,
        terminal=view.terminal,
    )


class DatasetServicer(dataset_pb2_grpc.DatasetServiceServicer):  # type: ignore[misc]
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    @unary
    def UploadDataset(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        header, chunks = _upload(requests)
        return dataset_message(self.platform.upload_dataset(identify(context), header, chunks))

    @unary
    def GetDataset(self, request: Any, context: grpc.ServicerContext) -> Any:
        return dataset_message(self.platform.get_dataset(identify(context), request.id))

    @unary
    def ListDatasets(self, request: Any, context: grpc.ServicerContext) -> Any:
        items, token = self.platform.list_datasets(
            identify(context), request.page_size, request.page_token
        )
        return dataset_pb2.ListDatasetsResponse(
            datasets=[dataset_message(d) for d in items], next_page_token=token
        )


class AlgorithmServicer(algorithm_pb2_grpc.AlgorithmServiceServicer):  # type: ignore[misc]
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    @unary
    def UploadAlgorithm(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
        header, chunks = _upload(requests)
        return algorithm_message(self.platform.upload_algorithm(identify(context), header, chunks))

    @unary
    def GetAlgorithm(self, request: Any, context: grpc.ServicerContext) -> Any:
        return algorithm_message(self.platform.get_algorithm(identify(context), request.id))

    @unary
    def ListAlgorithms(self, request: Any, context: grpc.ServicerContext) -> Any:
        items, token = self.platform.list_algorithms(
            identify(context), request.page_size, request.page_token
        )
        return algorithm_pb2.ListAlgorithmsResponse(
            algorithms=[algorithm_message(a) for a in items], next_page_token=token
        )


class JobServicer(job_pb2_grpc.JobServiceServicer):  # type: ignore[misc]
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    @unary
    def SubmitJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        view = self.platform.submit_job(
            identify(context), request.dataset_id, request.algorithm_id, request.policy
        )
        return job_message(view)

    @unary
    def GetJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        return job_message(self.platform.get_job(identify(context), request.id))

    @unary
    def ListJobs(self, request: Any, context: grpc.ServicerContext) -> Any:
        items, token = self.platform.list_jobs(
            identify(context), request.page_size, request.page_token
        )
        return job_pb2.ListJobsResponse(jobs=[job_message(v) for v in items], next_page_token=token)

    @streaming
    def WatchJob(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for view in self.platform.watch_job(identify(context), request.id, context.is_active):
            yield job_message(view)

    @unary
    def CancelJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        return job_message(self.platform.cancel_job(identify(context), request.id))

    @unary
    def ApproveJob(self, request: Any, context: grpc.ServicerContext) -> Any:
        view = self.platform.approve_job(identify(context), request.id, approved=not request.deny)
        return job_message(view)

    @unary
    def PreapproveAlgorithm(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.platform.preapprove(identify(context), request.dataset_id, request.algorithm_id)
        return job_pb2.PreapproveAlgorithmResponse(
            dataset_id=request.dataset_id, algorithm_id=request.algorithm_id
        )


class ModelServicer(model_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    @unary
    def GetRelease(self, request: Any, context: grpc.ServicerContext) -> Any:
        release = self.platform.get_release(identify(context), request.job_id)
        return model_pb2.Release(
            job_id=release.job_id,
            model_sha256=release.model_sha256,
            model_size=release.model_size,
            released_at=release.released_at,
            decision=release.decision,
        )

    @streaming
    def DownloadModel(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        release, chunks = self.platform.open_model(identify(context), request.job_id)
        first = True
        for data in chunks:
            if first:
                yield common_pb2.Chunk(
                    data=data, size=release.model_size, sha256=release.model_sha256
                )
                first = False
            else:
                yield common_pb2.Chunk(data=data)

    @unary
    def GetReport(self, request: Any, context: grpc.ServicerContext) -> Any:
        view = self.platform.get_report(identify(context), request.job_id)
        return model_pb2.JobReport(
            job_id=view.job_id,
            decision=view.decision,
            report_json=view.report_json,
            attestation_json=view.attestation_json,
            logs=view.logs,
            dataset_opening_json=view.dataset_opening_json,
        )


class PolicyServicer(policy_pb2_grpc.PolicyServiceServicer):  # type: ignore[misc]
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    @unary
    def ListPolicies(self, request: Any, context: grpc.ServicerContext) -> Any:
        names, token = self.platform.list_policies(request.page_size, request.page_token)
        return policy_pb2.ListPoliciesResponse(names=names, next_page_token=token)

    @unary
    def GetPolicy(self, request: Any, context: grpc.ServicerContext) -> Any:
        view = self.platform.get_policy(request.name)
        return policy_pb2.Policy(name=view.name, sha256=view.sha256, json=view.json)


class AuditServicer(audit_pb2_grpc.AuditServiceServicer):  # type: ignore[misc]
    def __init__(self, platform: Platform) -> None:
        self.platform = platform

    @unary
    def GetPublicKey(self, request: Any, context: grpc.ServicerContext) -> Any:
        pem, kid = self.platform.public_key()
        return audit_pb2.PublicKey(pem=pem, key_id=kid)

    @streaming
    def ReadAuditLog(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        for line in self.platform.read_audit_log(request.from_seq, request.limit):
            yield audit_pb2.AuditEntry(json=line)

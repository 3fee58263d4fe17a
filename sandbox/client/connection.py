"""`Client`: one party's mTLS connection to the server, with typed helpers.

Every call maps grpc errors back to the error catalog (sandbox.api.status), so the
CLI exits with the catalog's exit codes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc

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
from sandbox.api.status import from_rpc_error
from sandbox.client.config import ClientConfig
from sandbox.client.frames import chunk_frame, chunk_tag, raw_upload
from sandbox.client.progress import Bar
from sandbox.errors import InvalidInput, NotFound, VerificationFailed

CHUNK: Final = 1 << 20
T = TypeVar("T")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while data := handle.read(CHUNK):
            digest.update(data)
    return digest.hexdigest()


def _call(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except grpc.RpcError as error:
        raise from_rpc_error(error) from None


def channel_for(config: ClientConfig) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=config.ca.read_bytes(),
        private_key=config.key.read_bytes(),
        certificate_chain=config.cert.read_bytes(),
    )
    return grpc.secure_channel(
        config.address,
        credentials,
        options=[
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
        ],
    )


class Client:
    def __init__(self, config: ClientConfig, *, progress: bool | None = None) -> None:
        self.config = config
        self.progress = progress
        self.channel = channel_for(config)
        self.datasets: Any = dataset_pb2_grpc.DatasetServiceStub(self.channel)
        self.algorithms: Any = algorithm_pb2_grpc.AlgorithmServiceStub(self.channel)
        self.jobs: Any = job_pb2_grpc.JobServiceStub(self.channel)
        self.models: Any = model_pb2_grpc.ModelServiceStub(self.channel)
        self.policies: Any = policy_pb2_grpc.PolicyServiceStub(self.channel)
        self.audit: Any = audit_pb2_grpc.AuditServiceStub(self.channel)
        services = (dataset_pb2.DESCRIPTOR, algorithm_pb2.DESCRIPTOR)
        self._upload_dataset = raw_upload(
            self.channel, services[0].services_by_name["DatasetService"], "UploadDataset"
        )
        self._upload_algorithm = raw_upload(
            self.channel, services[1].services_by_name["AlgorithmService"], "UploadAlgorithm"
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- uploads

    def _stream(self, path: Path, name: str, message: Any, label: str) -> Iterator[Any]:
        """The header message, then the file as chunk frames (see sandbox.client.frames)."""
        size = path.stat().st_size
        digest = sha256_of(path)
        yield message(header=common_pb2.UploadHeader(name=name, size=size, sha256=digest))
        bar = Bar(label, size, enabled=self.progress)
        tag = chunk_tag(message)
        with open(path, "rb") as handle:
            while data := handle.read(CHUNK):
                bar.advance(len(data))
                yield chunk_frame(tag, data)
        bar.close()

    def upload_dataset(self, path: Path, name: str) -> Any:
        if not path.is_file():
            raise NotFound(f"dataset {path} does not exist; pass an .npz file")
        requests = self._stream(path, name, dataset_pb2.UploadDatasetRequest, "upload")
        return _call(lambda: self._upload_dataset(requests))

    def upload_algorithm(self, path: Path) -> Any:
        if path.is_dir():
            with tempfile.TemporaryDirectory(prefix="sandbox-algo-") as tmp:
                archive = Path(tmp) / f"{path.name}.tar.gz"
                pack_directory(path, archive)
                return self._upload_archive(archive)
        if not path.is_file():
            raise NotFound(f"algorithm {path} does not exist; pass a directory or .tar.gz")
        return self._upload_archive(path)

    def _upload_archive(self, archive: Path) -> Any:
        requests = self._stream(
            archive, archive.name, algorithm_pb2.UploadAlgorithmRequest, "upload"
        )
        return _call(lambda: self._upload_algorithm(requests))

    # ---------------------------------------------------------------- jobs

    def submit(self, dataset_id: str, algorithm_id: str, policy: str) -> Any:
        request = job_pb2.SubmitJobRequest(
            dataset_id=dataset_id, algorithm_id=algorithm_id, policy=policy
        )
        return _call(lambda: self.jobs.SubmitJob(request))

    def get_job(self, job_id: str) -> Any:
        return _call(lambda: self.jobs.GetJob(job_pb2.GetJobRequest(id=job_id)))

    def list_jobs(self, page_size: int = 50, page_token: str = "") -> Any:
        request = job_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        return _call(lambda: self.jobs.ListJobs(request))

    def watch(self, job_id: str, timeout_s: float | None = None) -> Iterator[Any]:
        stream = self.jobs.WatchJob(job_pb2.WatchJobRequest(id=job_id), timeout=timeout_s)
        try:
            yield from stream
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def wait(self, job_id: str, timeout_s: float | None = None) -> Any:
        last = None
        for job in self.watch(job_id, timeout_s):
            last = job
        return last

    def cancel(self, job_id: str) -> Any:
        return _call(lambda: self.jobs.CancelJob(job_pb2.CancelJobRequest(id=job_id)))

    def approve(self, job_id: str, *, deny: bool = False) -> Any:
        request = job_pb2.ApproveJobRequest(id=job_id, deny=deny)
        return _call(lambda: self.jobs.ApproveJob(request))

    def preapprove(self, dataset_id: str, algorithm_id: str) -> Any:
        request = job_pb2.PreapproveAlgorithmRequest(
            dataset_id=dataset_id, algorithm_id=algorithm_id
        )
        return _call(lambda: self.jobs.PreapproveAlgorithm(request))

    # ---------------------------------------------------------------- models and reports

    def release(self, job_id: str) -> Any:
        request = model_pb2.GetReleaseRequest(job_id=job_id)
        return _call(lambda: self.models.GetRelease(request))

    def report(self, job_id: str) -> Any:
        request = model_pb2.GetReportRequest(job_id=job_id)
        return _call(lambda: self.models.GetReport(request))

    def download_model(self, job_id: str, out: Path) -> dict[str, Any]:
        """Stream the model to `out` and check its sha256 against the release record."""
        release = self.release(job_id)
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
        digest = hashlib.sha256()
        size = 0
        bar = Bar("download", release.model_size, enabled=self.progress)
        try:
            with os.fdopen(fd, "wb") as handle:
                stream = self.models.DownloadModel(model_pb2.DownloadModelRequest(job_id=job_id))
                try:
                    for chunk in stream:
                        handle.write(chunk.data)
                        digest.update(chunk.data)
                        size += len(chunk.data)
                        bar.advance(len(chunk.data))
                except grpc.RpcError as error:
                    raise from_rpc_error(error) from None
            bar.close()
            if digest.hexdigest() != release.model_sha256 or size != release.model_size:
                raise VerificationFailed(
                    f"the downloaded model has sha256 {digest.hexdigest()} ({size} bytes), "
                    f"but the release record says {release.model_sha256} "
                    f"({release.model_size} bytes); nothing was written to {out}"
                )
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return {
            "job_id": job_id,
            "path": str(out),
            "sha256": release.model_sha256,
            "bytes": size,
            "verified": True,
        }

    # ---------------------------------------------------------------- misc

    def list_policies(self) -> list[str]:
        """Every policy name, following the pages."""
        names: list[str] = []
        token = ""
        while True:
            request = policy_pb2.ListPoliciesRequest(page_token=token)
            response = _call(functools.partial(self.policies.ListPolicies, request))
            names.extend(response.names)
            token = response.next_page_token
            if not token:
                return names

    def public_key(self) -> Any:
        return _call(lambda: self.audit.GetPublicKey(audit_pb2.GetPublicKeyRequest()))


def pack_directory(src: Path, archive: Path) -> None:
    """A .tar.gz of a package directory: regular files and directories only."""

    def only_plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if info.issym() or info.islnk() or not (info.isfile() or info.isdir()):
            raise InvalidInput(f"{info.name} in {src} is not a regular file or directory")
        if "__pycache__" in Path(info.name).parts:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(archive, "w:gz") as tar:
        for entry in sorted(src.iterdir()):
            tar.add(entry, arcname=entry.name, filter=only_plain)


def job_dict(job: Any) -> dict[str, Any]:
    result: dict[str, Any] = {
        "id": job.id,
        "dataset_id": job.dataset_id,
        "algorithm_id": job.algorithm_id,
        "submitter": job.submitter,
        "policy": job.policy_name,
        "state": job.state,
        "decision": job.decision or None,
        "approval": job.approval,
        "terminal": job.terminal,
    }
    if job.reasons:
        result["reasons"] = list(job.reasons)
    if job.history:
        result["history"] = [
            {"from": h.from_state or None, "to": h.to_state, "at": h.at, "detail": h.detail}
            for h in job.history
        ]
    return result

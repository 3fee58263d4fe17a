"""Wiring: state directory, storage, executor, platform, servicers, mTLS, health, reflection.

`start_server` is used by `sandbox serve`, by the demo (in-process, port 0) and by
tests. The server requires client certificates from the state directory's CA; the
caller's party and role come from that certificate only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sandbox.api.auth import AuthInterceptor
from sandbox.api.gen.sandbox.v1 import (
    algorithm_pb2,
    algorithm_pb2_grpc,
    audit_pb2,
    audit_pb2_grpc,
    dataset_pb2,
    dataset_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    model_pb2,
    model_pb2_grpc,
    policy_pb2,
    policy_pb2_grpc,
)
from sandbox.api.servicers import (
    AlgorithmServicer,
    AuditServicer,
    DatasetServicer,
    JobServicer,
    ModelServicer,
    PolicyServicer,
)
from sandbox.audit import load_signing_key
from sandbox.errors import FailedPrecondition
from sandbox.runner.gpu import GpuPool
from sandbox.service.executor import DockerExecutor, Executor
from sandbox.service.failpoint import FailPoint
from sandbox.service.platform import Limits, Platform
from sandbox.service.state import StateDir
from sandbox.store import BlobStore, MasterKey, MetadataStore, SqliteMetadataStore

log = logging.getLogger("sandbox.server")

MAX_MESSAGE: Final = 8 << 20
SERVICE_NAMES: Final = (
    dataset_pb2.DESCRIPTOR.services_by_name["DatasetService"].full_name,
    algorithm_pb2.DESCRIPTOR.services_by_name["AlgorithmService"].full_name,
    job_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    policy_pb2.DESCRIPTOR.services_by_name["PolicyService"].full_name,
    audit_pb2.DESCRIPTOR.services_by_name["AuditService"].full_name,
)


def bound_malloc_retention() -> None:
    """Keep streamed buffers from inflating the server's resident memory.

    Uploads and downloads move 1 MiB messages through many threads. By default glibc
    adapts its mmap threshold upwards after such buffers are freed and keeps them in
    per-thread arenas (one bench run in three grew the server by 115 MB). A fixed
    threshold above the message size (no adaptation, no mmap per message, which cost
    ~20% upload throughput at 256 KiB) and two arenas keep it bounded.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)
        libc.mallopt(_M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        log.debug("mallopt unavailable; memory is not tuned")


_M_MMAP_THRESHOLD: Final = -3
_M_ARENA_MAX: Final = -8


@dataclass
class RunningServer:
    server: grpc.Server
    platform: Platform
    port: int
    health: health.HealthServicer
    stopped: bool = False

    def stop(self, grace_s: float = 1.0) -> None:
        """Stop serving, then close the audit log and the store; safe to call twice."""
        if self.stopped:
            return
        self.stopped = True
        for name in ("", *SERVICE_NAMES):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.platform.stop()
        self.server.stop(grace_s).wait()
        self.platform.store.close()


def build_platform(
    state: StateDir,
    *,
    executor: Executor | None = None,
    cpu_slots: int = 1,
    limits: Limits | None = None,
    store: MetadataStore | None = None,
    failpoint: FailPoint | None = None,
) -> Platform:
    state.check()
    for directory in (state.blobs, state.jobs, state.work):
        directory.mkdir(mode=0o700, exist_ok=True)
    signing_key = load_signing_key(state.signing_key)
    executor = executor or DockerExecutor(
        signing_key=signing_key, audit_path=state.audit_log, work_root=state.work
    )
    return Platform(
        state,
        store=store or SqliteMetadataStore(state.metadata),
        blobs=BlobStore(state.blobs),
        master=MasterKey.load(state.master_key),
        signing_key=signing_key,
        executor=executor,
        cpu_slots=cpu_slots,
        gpu_pool=GpuPool(),
        limits=limits,
        failpoint=failpoint,
    )


def start_server(
    state_dir: Path,
    address: str = "127.0.0.1:0",
    *,
    executor: Executor | None = None,
    cpu_slots: int = 1,
    limits: Limits | None = None,
    max_workers: int = 32,
    store: MetadataStore | None = None,
) -> RunningServer:
    """Start serving on `address` (port 0: any free port); returns at once."""
    state = StateDir(state_dir)
    bound_malloc_retention()
    platform = build_platform(
        state,
        executor=executor,
        cpu_slots=cpu_slots,
        limits=limits,
        store=store,
        failpoint=FailPoint.from_environment(),  # crash tests only: read once, here
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
        interceptors=[AuthInterceptor(platform.ensure_party)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ],
    )
    dataset_pb2_grpc.add_DatasetServiceServicer_to_server(DatasetServicer(platform), server)
    algorithm_pb2_grpc.add_AlgorithmServiceServicer_to_server(AlgorithmServicer(platform), server)
    job_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(platform), server)
    model_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(platform), server)
    policy_pb2_grpc.add_PolicyServiceServicer_to_server(PolicyServicer(platform), server)
    audit_pb2_grpc.add_AuditServiceServicer_to_server(AuditServicer(platform), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((*SERVICE_NAMES, reflection.SERVICE_NAME), server)
    credentials = grpc.ssl_server_credentials(
        [(state.server_key.read_bytes(), state.server_cert.read_bytes())],
        root_certificates=state.ca_cert.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port(address, credentials)
    if port == 0:
        raise FailedPrecondition(f"cannot listen on {address}; is the port in use?")
    failed = platform.start()
    if failed:
        log.warning("reconciled after a restart: failed %d unfinished job(s)", len(failed))
    server.start()
    for name in ("", *SERVICE_NAMES):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, platform, port, health_servicer)


def serve_forever(state_dir: Path, address: str, ready: threading.Event | None = None) -> None:
    """`sandbox serve`: run until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    running = start_server(state_dir, address)
    host = address.rsplit(":", 1)[0]
    print(f"sandbox server listening on {host}:{running.port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    if ready is not None:
        ready.set()
    stop.wait()
    running.stop()

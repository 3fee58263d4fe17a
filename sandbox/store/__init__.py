"""Storage: encrypted datasets, content-addressed blobs, and metadata.

- `crypto`: the master key and the chunked AES-256-GCM dataset format.
- `blobs`: `BlobStore`, immutable files named by their sha256.
- `metadata`: records and the `MetadataStore` contract, with two backends,
  `SqliteMetadataStore` (the server's) and `InMemoryMetadataStore` (tests' fake).

This package imports only `sandbox.errors`, the standard library and cryptography.
"""

from sandbox.store.blobs import BlobRef, BlobStore
from sandbox.store.crypto import EncryptedInfo, MasterKey, decrypt_to, encrypt_stream
from sandbox.store.metadata import (
    TRANSITIONS,
    Algorithm,
    Approval,
    ApprovalState,
    Dataset,
    Decision,
    Job,
    JobState,
    MetadataStore,
    Page,
    Party,
    Release,
    Role,
    StateChange,
    new_id,
)
from sandbox.store.metadata_memory import InMemoryMetadataStore
from sandbox.store.metadata_sqlite import SqliteMetadataStore

__all__ = [
    "TRANSITIONS",
    "Algorithm",
    "Approval",
    "ApprovalState",
    "BlobRef",
    "BlobStore",
    "Dataset",
    "Decision",
    "EncryptedInfo",
    "InMemoryMetadataStore",
    "Job",
    "JobState",
    "MasterKey",
    "MetadataStore",
    "Page",
    "Party",
    "Release",
    "Role",
    "SqliteMetadataStore",
    "StateChange",
    "decrypt_to",
    "encrypt_stream",
    "new_id",
]

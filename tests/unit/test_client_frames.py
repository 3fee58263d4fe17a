"""Hand-framed upload chunks are byte-for-byte what protobuf would send."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sandbox.api.gen.sandbox.v1 import algorithm_pb2, common_pb2, dataset_pb2
from sandbox.client import frames


@pytest.mark.parametrize(
    "request_class", [dataset_pb2.UploadDatasetRequest, algorithm_pb2.UploadAlgorithmRequest]
)
@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 21) + 3])
def test_a_chunk_frame_is_the_serialized_message(request_class: type, size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = frames.chunk_frame(frames.chunk_tag(request_class), data)
    assert frame == request_class(chunk=data).SerializeToString()
    parsed = request_class.FromString(frame)
    assert parsed.WhichOneof("part") == "chunk"
    assert parsed.chunk == data


def test_messages_are_serialized_and_frames_pass_through() -> None:
    header = dataset_pb2.UploadDatasetRequest(
        header=common_pb2.UploadHeader(name="d", size=3, sha256="0" * 64)
    )
    assert frames._serialize(header) == header.SerializeToString()
    frame = frames.chunk_frame(frames.chunk_tag(dataset_pb2.UploadDatasetRequest), b"abc")
    assert frames._serialize(frame) is frame


def test_only_a_bytes_chunk_field_is_framed() -> None:
    string_field = common_pb2.UploadHeader.DESCRIPTOR.fields_by_name["name"]
    descriptor = SimpleNamespace(
        full_name="test.StringChunk", fields_by_name={"chunk": string_field}
    )
    with pytest.raises(TypeError, match="not a bytes field"):
        frames.chunk_tag(SimpleNamespace(DESCRIPTOR=descriptor))
    with pytest.raises(KeyError):
        frames.chunk_tag(common_pb2.UploadHeader)  # no chunk field at all

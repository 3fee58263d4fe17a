"""A PNG reader for screenshots (8-bit RGB/RGBA, no interlacing): no imaging library.

The project has no PIL; numpy undoes the Sub and Up filters row by row, plain Python
the Average and Paeth ones (which depend on the pixel to the left).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path: Path) -> npt.NDArray[np.uint8]:
    """Pixels as [height, width, channels] uint8."""
    data = path.read_bytes()
    if not data.startswith(SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        elif kind == b"IEND":
            break
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    if depth != 8 or colour not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, colour type {colour}")
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = np.frombuffer(zlib.decompress(bytes(idat)), dtype=np.uint8).reshape(height, stride + 1)
    out = np.zeros((height, stride), dtype=np.uint8)
    previous = np.zeros(stride, dtype=np.uint8)
    for row in range(height):
        kind, line = int(raw[row, 0]), raw[row, 1:]
        if kind == 0:
            current = line.copy()
        elif kind == 1:
            sums = np.cumsum(line.reshape(width, bpp).astype(np.int64), axis=0)
            current = (sums % 256).astype(np.uint8).reshape(-1)
        elif kind == 2:
            current = line + previous  # uint8 arithmetic wraps: mod 256
        else:
            current = _unfilter_slow(kind, line.tolist(), previous.tolist(), bpp)
        out[row] = current
        previous = current
    return out.reshape(height, width, bpp)


def _unfilter_slow(kind: int, line: list[int], up: list[int], bpp: int) -> npt.NDArray[np.uint8]:
    result = [0] * len(line)
    for i, value in enumerate(line):
        left = result[i - bpp] if i >= bpp else 0
        above = up[i]
        if kind == 3:
            result[i] = (value + (left + above) // 2) & 0xFF
        elif kind == 4:
            corner = up[i - bpp] if i >= bpp else 0
            p = left + above - corner
            pa, pb, pc = abs(p - left), abs(p - above), abs(p - corner)
            best = left if pa <= pb and pa <= pc else above if pb <= pc else corner
            result[i] = (value + best) & 0xFF
        else:
            raise ValueError(f"unknown PNG filter {kind}")
    return np.array(result, dtype=np.uint8)

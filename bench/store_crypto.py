"""Dataset encryption throughput, next to the floors it cannot beat.

Writes a random plaintext file, then, round by round, times `encrypt_stream`
(file -> file: read, sha256, AES-256-GCM, write) and `decrypt_to` (file -> file:
read, authenticate, sha256, write), and over the same bytes `hashlib.sha256` and
`shutil.copyfile`. Both directions hash the plaintext, so sha256 is the floor; the
target is >= 200 MB/s each way. Files are not fsynced (the blob store does that
once per file, whatever the cipher). Reports medians of the rounds in MB/s (10**6).

    python bench/store_crypto.py [--mb 512] [--runs 3] [--dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sandbox.store.crypto import DEFAULT_CHUNK_SIZE, MasterKey, decrypt_to, encrypt_stream

_MIB = 1 << 20
TARGET_MB_S = 200.0


def write_random(path: Path, mib: int) -> None:
    block = os.urandom(_MIB)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(block[i % 251 :] + block[: i % 251])  # distinct chunks, cheap to make


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(DEFAULT_CHUNK_SIZE):
            digest.update(data)
    return digest.hexdigest()


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="plaintext size in MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the temporary files go")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    master = MasterKey.generate()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        plain, sealed, back, copy = (Path(tmp) / n for n in ("plain", "sealed", "back", "copy"))
        write_random(plain, args.mb)
        size = plain.stat().st_size

        def encrypt() -> None:
            with open(plain, "rb") as src, open(sealed, "wb") as dst:
                encrypt_stream(src, dst, "bench", master)

        def decrypt() -> None:
            with open(sealed, "rb") as src, open(back, "wb") as dst:
                decrypt_to(src, dst, "bench", master)

        actions = {
            "encrypt": encrypt,
            "decrypt": decrypt,
            "sha256": lambda: sha256_file(plain),
            "copyfile": lambda: shutil.copyfile(plain, copy),
        }
        encrypt()  # warm-up (and a file for the first decrypt)
        seconds: dict[str, list[float]] = {name: [] for name in actions}
        for _ in range(args.runs):
            for name, action in actions.items():
                seconds[name].append(timed(action))
        assert sha256_file(back) == sha256_file(plain)
        overhead = sealed.stat().st_size - size

    rates = {name: size / 1e6 / statistics.median(runs) for name, runs in seconds.items()}
    if args.json:
        print(json.dumps({"bytes": size, "mb_per_s": rates, "seconds": seconds}, indent=2))
        return
    print(
        f"plaintext {size / 1e6:.0f} MB, ciphertext overhead {overhead} bytes, "
        f"median of {args.runs} runs, {os.cpu_count()} CPUs"
    )
    for name, rate in rates.items():
        mark = ""
        if name in ("encrypt", "decrypt"):
            mark = "  target met" if rate >= TARGET_MB_S else f"  BELOW {TARGET_MB_S:.0f} MB/s"
        print(f"  {name:<9} {rate:8.0f} MB/s{mark}")


if __name__ == "__main__":
    main()

"""Throughput of the chunk codec (hash + zstd + AES-GCM, and back), per thread count.

Run: PYTHONPATH=operator python bench/chunk_codec.py [--mib 256] [--threads 1,2]
Prints one table row per (data kind, encryption, direction, threads) in MiB/s of
plaintext. Not part of the test run.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

from vmguard.store.chunk import ChunkCodec
from vmguard.store.crypto import DataKeys
from vmguard.store.envelope import Envelope

CHUNK = 4 * 1024 * 1024


def _data(kind: str, count: int) -> list[bytes]:
    rng = random.Random(1)
    if kind == "random":
        return [os.urandom(CHUNK) for _ in range(count)]
    if kind == "text":
        out = []
        for _ in range(count):
            line = f"{rng.random()} INFO request served in {rng.randrange(999)} ms\n".encode()
            words = [line] * (CHUNK // len(line) + 1)
            out.append(b"".join(words)[:CHUNK])
        return out
    # "mixed": half random, half repetitive: the shape of a typical OS disk chunk
    return [os.urandom(CHUNK // 2) + bytes(CHUNK // 4) + b"ab" * (CHUNK // 8) for _ in range(count)]


def _codec(encrypted: bool) -> ChunkCodec:
    if not encrypted:
        return ChunkCodec(Envelope(None), None, CHUNK)
    keys = DataKeys(os.urandom(32))
    return ChunkCodec(Envelope(keys.aead), keys.id_key, CHUNK)


def _decode(codec: ChunkCodec, pair: tuple[bytes, bytes]) -> bytes:
    return codec.decode(*pair)


def _rate(fn: object, items: list[bytes], threads: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items))  # type: ignore[call-overload]
    return len(items) * CHUNK / (time.perf_counter() - start) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    count = max(1, args.mib // 4)
    print(f"{'data':8} {'enc':5} {'op':7} {'thr':>3} {'MiB/s':>8} {'ratio':>6}")
    for kind in ("random", "mixed", "text"):
        chunks = _data(kind, count)
        for encrypted in (False, True):
            codec = _codec(encrypted)
            encoded = [codec.encode(c) for c in chunks]
            ratio = sum(len(b) for _, b in encoded) / (count * CHUNK)
            for threads in (int(t) for t in args.threads.split(",")):
                enc = _rate(codec.encode, chunks, threads)
                dec = _rate(functools.partial(_decode, codec), encoded, threads)
                hashed = _rate(codec.chunk_id, chunks, threads)
                for op, rate in (("hash", hashed), ("encode", enc), ("decode", dec)):
                    print(f"{kind:8} {encrypted!s:5} {op:7} {threads:3} {rate:8.0f} {ratio:6.3f}")


if __name__ == "__main__":
    main()

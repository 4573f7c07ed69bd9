"""Synthetic JSONL input: many small files of prompt records, like the ones the convert job reads.

``python -m promptscore.tools.sample_data DIR --files 4000`` writes ``DIR/shard=NN/part-NNNNNN.jsonl``
files of about ``--file-kb`` KB each. ``--bad-every N`` puts one malformed line in every N-th file,
so the demo shows rejects.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from promptscore.tools.words import WORDS

_SOURCES = ("web", "code", "chat", "math", "docs")


def _prompt(rng: random.Random, max_words: int = 600) -> str:
    n = rng.randint(min(20, max_words), max_words)
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "?"


def make_record(rng: random.Random, idx: int) -> dict:
    """One input record: a prompt and a few metadata fields of mixed types."""
    return {
        "id": f"r{idx:012d}",
        "prompt": _prompt(rng),
        "source": rng.choice(_SOURCES),
        "lang": rng.choice(("en", "zh", "ja")),
        "turns": rng.randint(1, 8),
        "quality": round(rng.random(), 4),
    }


def write_file(path: Path, seed: int, target_bytes: int, bad: bool = False, gz: bool = False) -> int:
    """Write one JSONL file of about ``target_bytes``; returns the number of records written."""
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    i = 0
    while i == 0 or size < target_bytes:  # at least one record
        line = json.dumps(make_record(rng, seed * 100_000 + i), ensure_ascii=False)
        lines.append(line)
        size += len(line.encode()) + 1
        i += 1
    if bad:
        lines.insert(rng.randrange(len(lines) + 1), '{"prompt": "cut off in the mid')
    data = ("\n".join(lines) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_suffix(".jsonl.gz")
        data = gzip.compress(data, compresslevel=1)
    path.write_bytes(data)
    return i


def _write_range(args: tuple[str, int, int, int, int, int]) -> int:
    root, start, stop, file_kb, bad_every, gz_every = args
    total = 0
    for n in range(start, stop):
        path = Path(root) / f"{n % 16:02d}" / f"{(n // 16) % 8:02d}" / f"part-{n:06d}.jsonl"
        bad = bad_every > 0 and n % bad_every == bad_every - 1
        gz = gz_every > 0 and n % gz_every == gz_every - 1
        total += write_file(path, n, file_kb * 1024, bad=bad, gz=gz)
    return total


def generate(root: str, files: int, file_kb: int = 100, bad_every: int = 0, gz_every: int = 0,
             workers: int | None = None) -> int:
    """Write ``files`` JSONL files under ``root``; returns the number of good records."""
    workers = workers or min(8, os.cpu_count() or 1)
    step = max(1, files // (workers * 4))
    chunks = [(root, s, min(files, s + step), file_kb, bad_every, gz_every)
              for s in range(0, files, step)]
    if workers == 1 or len(chunks) == 1:
        return sum(map(_write_range, chunks))
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_write_range, chunks))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m promptscore.tools.sample_data", description=__doc__.splitlines()[0])
    p.add_argument("root", help="directory to write into")
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--file-kb", type=int, default=100, help="approximate size of each file")
    p.add_argument("--bad-every", type=int, default=0, help="one malformed line in every N-th file")
    p.add_argument("--gz-every", type=int, default=0, help="gzip every N-th file")
    a = p.parse_args(argv)
    n = generate(a.root, a.files, a.file_kb, a.bad_every, a.gz_every)
    print(f"wrote {a.files} files with {n} records under {a.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""An ``oss://`` for tests and benchmarks: ``tests/objectstore/FakeObjectStoreFileSystem.java``.

The Java source is compiled with the machine's ``javac`` against pyspark's jars into a jar cached
by the hash of the source (a rerun finds it at once). ``oss://bucket/key`` is then the file
``<root>/bucket/key``, with an object store's behaviour: flat keys, listings in pages of 1,000,
copy-and-delete renames, a delay and a counter per request, transient faults on demand (see the
Java class).

In tests (fixtures in ``conftest.py``): the shared ``spark`` session has the filesystem when a JDK
with ``javac`` is there; ``oss_bucket`` gives each test a fresh, empty bucket (and skips without
``javac``); ``counts(spark)`` and ``reset_counts(spark)`` read and reset the requests made by the
session's JVM. A spark-submit run gets the same filesystem from ``submit_args(...)``; its JVMs
(driver and executors) each append their counts to ``counters_file``, summed by ``read_counts``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from promptscore.convert.reader import compile_jar, javac

SOURCE = Path(__file__).resolve().parent / "objectstore" / "FakeObjectStoreFileSystem.java"
CLASS = "promptscore.testfs.FakeObjectStoreFileSystem"
OPS = ("head", "list", "open", "create", "rename", "delete")
HADOOP_PREFIX = "fs.oss.emu."


def build_jar(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The filesystem's jar, compiled once per source and pyspark version; None without ``javac``.

    A compile error raises: a broken source must fail the run, not skip its tests.
    """
    return cached_jar(SOURCE, Path(cache_dir or Path(tempfile.gettempdir()) / "promptscore-fake-oss"), "fake-oss")


def cached_jar(source: Path, cache: Path, name: str) -> Path | None:
    """``source`` compiled into ``cache/<name>-<digest>.jar``, once per source and pyspark
    version (a rerun finds it at once); None without ``javac``."""
    import pyspark

    if javac() is None:
        return None
    digest = hashlib.sha256(source.read_bytes() + pyspark.__version__.encode()).hexdigest()[:16]
    jar = cache / f"{name}-{digest}.jar"
    return jar if jar.is_file() else compile_jar(source, jar)


def hadoop_conf(delays_ms: dict[str, int] | None = None, counters_file: str | os.PathLike | None = None,
                **emu: object) -> dict[str, str]:
    """``fs.oss.emu.*`` settings (the root aside).

    ``delays_ms``: milliseconds per request by op (``head``, ``list``, ``open``, ``create``,
    ``rename``, ``delete``; ``all`` sets the default). ``counters_file``: each JVM appends its
    counts there when it exits. ``emu``: any other ``fs.oss.emu.*`` key, dots as underscores
    (``list_page_size=100``, ``require_credentials=True``, ``fail_rename_after=2``; transient
    faults: ``fail_rate=0.01``, ``fail_ops="open,read"``, ``fail_prefix="in/"``, ``fail_seed=1``).
    """
    conf = {}
    for op, ms in (delays_ms or {}).items():
        conf["delay.ms" if op == "all" else f"delay.{op}.ms"] = str(int(ms))
    if counters_file:
        conf["counters.file"] = str(counters_file)
    for name, value in emu.items():
        conf[name.replace("_", ".")] = str(value).lower() if isinstance(value, bool) else str(value)
    return {HADOOP_PREFIX + k: v for k, v in conf.items()}


def spark_conf(jar: Path, root: str | os.PathLike, **kwargs) -> dict[str, str]:
    """Spark settings that serve ``oss://`` from ``root``, plus ``hadoop_conf(**kwargs)``."""
    conf = {
        "spark.jars": str(jar),
        # On the launching JVM's class path too, so that Hadoop finds the class from any thread.
        "spark.driver.extraClassPath": str(jar),
        "spark.executor.extraClassPath": str(jar),
        "spark.hadoop.fs.oss.impl": CLASS,
        f"spark.hadoop.{HADOOP_PREFIX}root": str(root),
    }
    conf.update({f"spark.hadoop.{k}": v for k, v in hadoop_conf(**kwargs).items()})
    return conf


def submit_args(jar: Path, root: str | os.PathLike, **kwargs) -> list[str]:
    """``spark-submit`` arguments for the same settings as ``spark_conf`` (before the job file)."""
    conf = spark_conf(jar, root, **kwargs)
    args = ["--jars", conf.pop("spark.jars"), "--driver-class-path", conf.pop("spark.driver.extraClassPath")]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    return args


def _fs_class(spark):
    from promptscore import sparkapi

    return getattr(sparkapi.jvm(spark), CLASS)


def counts(spark) -> dict[str, int]:
    """Requests made so far by the session's JVM (local mode: driver and executors), by op."""
    return {str(k): int(v) for k, v in dict(_fs_class(spark).counts()).items()}


def reset_counts(spark) -> None:
    """Set the session JVM's request counters (and its count of failed requests) to zero."""
    _fs_class(spark).resetCounts()


def failures(spark) -> int:
    """Requests the session's JVM made fail on purpose (``fail_rate=...``) since the last reset."""
    return int(_fs_class(spark).failures())


def read_counts(counters_file: str | os.PathLike) -> dict[str, int]:
    """The counts every JVM appended to ``counters_file``, summed, plus ``jvms``: how many did."""
    total = {op: 0 for op in OPS}
    total["jvms"] = 0
    path = Path(counters_file)
    for line in path.read_text().splitlines() if path.exists() else []:
        row = json.loads(line)
        total["jvms"] += 1
        for op in OPS:
            total[op] += int(row.get(op, 0))
    return total


_bucket_ids = itertools.count()


@dataclass(frozen=True)
class Store:
    """The fake store of a test run: its jar (None without ``javac``) and its root directory."""

    jar: Path | None
    root: Path

    def spark_conf(self, **kwargs) -> dict[str, str]:
        """``spark_conf`` for this store; empty without a jar."""
        return spark_conf(self.jar, self.root, **kwargs) if self.jar else {}

    def submit_args(self, **kwargs) -> list[str]:
        """``submit_args`` for this store."""
        assert self.jar is not None, "no jar: check store.jar first"
        return submit_args(self.jar, self.root, **kwargs)

    def bucket(self, prefix: str = "t") -> "Bucket":
        """A new, empty bucket."""
        return new_bucket(self.root, prefix)


@dataclass(frozen=True)
class Bucket:
    """A bucket of the fake store: its ``oss://`` URI and the local directory behind it."""

    name: str
    local: Path

    @property
    def uri(self) -> str:
        """``oss://<name>``."""
        return f"oss://{self.name}"

    def __truediv__(self, key: str) -> str:
        """``bucket / "a/b"`` is ``oss://<name>/a/b``."""
        return f"{self.uri}/{key.lstrip('/')}"

    def path(self, key: str) -> Path:
        """The local file of ``key``."""
        return self.local / key


def new_bucket(root: str | os.PathLike, prefix: str = "t") -> Bucket:
    """A new, empty bucket under ``root`` with a unique, valid name."""
    while True:
        name = f"{prefix}-{os.getpid()}-{next(_bucket_ids)}"
        local = Path(root) / name
        if not local.exists():
            local.mkdir(parents=True)
            return Bucket(name, local)

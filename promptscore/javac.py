"""Compile a Java source against pyspark's jars into a jar, with the machine's ``javac``.

The class files target Java 8 (``--release 8``), the oldest JVM a supported Spark runs on, so
that a jar built here runs on a cluster's Java 8, 11 or 17.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Sequence

_FIXED_TIME = (2020, 1, 1, 0, 0, 0)


def javac() -> str | None:
    """The ``javac`` to use (``$JAVA_HOME/bin/javac`` first), or None when there is none."""
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "javac"), os.X_OK):
        return os.path.join(home, "bin", "javac")
    return shutil.which("javac")


def spark_jars_dir() -> Path:
    """pyspark's own jars (Spark's and Hadoop's client APIs)."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent / "jars"


def compile_jar(source: Path | Sequence[Path], jar: Path, extra: dict[str, str] | None = None) -> Path:
    """Compile ``source`` (one file or several) into ``jar`` (replaced whole, never half-written),
    with ``extra`` files (name: text) beside the classes. The jar's bytes depend only on the class
    files and ``extra`` (fixed entry times), so a rebuild from the same sources is the same file.
    Raises RuntimeError when there is no ``javac`` or the source does not compile."""
    sources = [source] if isinstance(source, Path) else list(source)
    compiler = javac()
    if compiler is None:
        raise RuntimeError("no javac (install a JDK, e.g. openjdk-17-jdk-headless, or set JAVA_HOME)")
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent) as work:
        classes = Path(work) / "classes"
        proc = subprocess.run([compiler, "--release", "8", "-nowarn", "-cp", f"{spark_jars_dir()}/*",
                               "-d", str(classes), *map(str, sources)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"javac failed on {', '.join(s.name for s in sources)}:\n{proc.stderr[-4000:]}")
        partial = Path(work) / jar.name
        entries = {"META-INF/MANIFEST.MF": b"Manifest-Version: 1.0\r\n\r\n"}
        entries.update((f.relative_to(classes).as_posix(), f.read_bytes()) for f in sorted(classes.rglob("*.class")))
        entries.update((name, text.encode()) for name, text in (extra or {}).items())
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in entries.items():
                info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, data)
        os.replace(partial, jar)  # concurrent builders: the last complete jar wins
    return jar

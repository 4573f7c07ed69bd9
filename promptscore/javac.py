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


def compile_jar(source: Path, jar: Path, extra: dict[str, str] | None = None) -> Path:
    """Compile ``source`` into ``jar`` (replaced whole, never half-written), with ``extra`` files
    (name: text) beside the classes. Raises RuntimeError when there is no ``javac`` or the source
    does not compile."""
    compiler = javac()
    if compiler is None:
        raise RuntimeError("no javac (install a JDK, e.g. openjdk-17-jdk-headless, or set JAVA_HOME)")
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent) as work:
        classes = Path(work) / "classes"
        proc = subprocess.run([compiler, "--release", "8", "-nowarn", "-cp", f"{spark_jars_dir()}/*",
                               "-d", str(classes), str(source)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"javac failed on {source.name}:\n{proc.stderr[-4000:]}")
        partial = Path(work) / jar.name
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
            for f in sorted(classes.rglob("*.class")):
                z.write(f, f.relative_to(classes).as_posix())
            for name, text in (extra or {}).items():
                z.writestr(name, text)
        os.replace(partial, jar)  # concurrent builders: the last complete jar wins
    return jar

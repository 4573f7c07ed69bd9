"""Files through the cluster's Hadoop FileSystem (oss://, hdfs://, file://, plain paths).

Everything goes through the JVM of the active SparkSession, so the connector and the credentials
the cluster is configured with (JindoSDK and the ECS RAM role on EMR) are the ones used. Plain
paths resolve against ``fs.defaultFS`` exactly as Spark resolves them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GLOB_CHARS = re.compile(r"([\\*?\[\]{}])")


def _jvm(spark):
    return spark.sparkContext._jvm


def _path(spark, uri: str):
    return _jvm(spark).org.apache.hadoop.fs.Path(uri)


def _fs(spark, path):
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())


def qualify(spark, uri: str) -> str:
    """The fully qualified form of ``uri`` (scheme and authority added, relative paths resolved)."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    return fs.makeQualified(p).toString()


def exists(spark, uri: str) -> bool:
    """Whether a file or directory exists at ``uri``."""
    p = _path(spark, uri)
    return bool(_fs(spark, p).exists(p))


def delete(spark, uri: str, recursive: bool = True) -> None:
    """Delete ``uri`` if it exists."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    if fs.exists(p):
        fs.delete(p, recursive)


def write_bytes(spark, uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri``, replacing what was there."""
    p = _path(spark, uri)
    out = _fs(spark, p).create(p, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def write_text(spark, uri: str, text: str) -> None:
    """Write ``text`` (UTF-8) to ``uri``, replacing what was there."""
    write_bytes(spark, uri, text.encode("utf-8"))


def read_text(spark, uri: str) -> str:
    """Read a small UTF-8 file from ``uri``."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    length = int(fs.getFileStatus(p).getLen())
    stream = fs.open(p)
    try:
        buf = _jvm(spark).java.io.ByteArrayOutputStream()
        _jvm(spark).org.apache.hadoop.io.IOUtils.copyBytes(stream, buf, 65536, False)
        data = bytes(buf.toByteArray())
    finally:
        stream.close()
    assert len(data) == length
    return data.decode("utf-8")


@dataclass(frozen=True)
class FileInfo:
    """One file of a listing."""

    path: str
    size: int


def list_data_files(spark, uri: str) -> list[FileInfo]:
    """The data files directly under ``uri`` (not recursive), skipping ``_*`` and ``.*`` names.

    Meant for output directories of a few files; inputs of millions of files are listed by Spark.
    """
    p = _path(spark, uri)
    fs = _fs(spark, p)
    if not fs.exists(p):
        return []
    files = []
    for st in fs.listStatus(p):
        name = st.getPath().getName()
        if st.isFile() and not name.startswith(("_", ".")):
            files.append(FileInfo(st.getPath().toString(), int(st.getLen())))
    return sorted(files, key=lambda f: f.path)


def list_tree(spark, uri: str) -> list[tuple[str, int]]:
    """Every file under ``uri`` (recursively) as (path relative to ``uri``, size). For small trees,
    such as a model directory."""
    p = _path(spark, uri.rstrip("/"))
    fs = _fs(spark, p)
    base = fs.makeQualified(p).toString().rstrip("/") + "/"
    files = []
    it = fs.listFiles(p, True)
    while it.hasNext():
        st = it.next()
        files.append((st.getPath().toString().removeprefix(base), int(st.getLen())))
    return sorted(files)


def uri_to_path(spark, uri: str) -> str:
    """Turn a percent-encoded file URI (as Spark lists files) back into a plain path string."""
    return _jvm(spark).org.apache.hadoop.fs.Path(_jvm(spark).java.net.URI(uri)).toString()


def escape_glob(path: str) -> str:
    """Escape glob characters so that DataFrameReader takes ``path`` literally."""
    return _GLOB_CHARS.sub(r"\\\1", path)


def file_size(spark, uri: str) -> int:
    """The length of the file at ``uri`` in bytes."""
    p = _path(spark, uri)
    return int(_fs(spark, p).getFileStatus(p).getLen())


def set_marker(spark, directory: str, present: bool) -> None:
    """Create (``present``) or remove the ``_SUCCESS`` marker in ``directory``."""
    marker = directory.rstrip("/") + "/_SUCCESS"
    if present:
        write_text(spark, marker, "")
    else:
        delete(spark, marker, recursive=False)

"""Files through the cluster's Hadoop FileSystem (oss://, hdfs://, file://, plain paths).

Everything goes through the JVM of the active SparkSession, so the connector and the credentials
the cluster is configured with (JindoSDK and the ECS RAM role on EMR) are the ones used. Plain
paths resolve against ``fs.defaultFS`` exactly as Spark resolves them.

Reads, listings and status calls that fail with a transient error (``is_transient``: a 5xx or 429
answer, a reset or timed-out connection) are made again, up to ``ATTEMPTS`` times with growing
pauses, and counted (``retries()``). Writes, renames and deletes are not: the connector's own
retries cover them, and the jobs' journals make a failed one safe to run again.
"""

from __future__ import annotations

import functools
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from udfs.uris import has_scheme

_GLOB_CHARS = re.compile(r"([\\*?\[\]{}])")
ATTEMPTS = 5
FIRST_PAUSE_S = 0.2
_PERMANENT = re.compile(r"(?i)\b(400|401|403|404|405|409|412|416)\b|AccessDenied|Access Denied|Forbidden|NoSuchKey"
                        r"|NoSuchBucket|InvalidAccessKeyId|SignatureDoesNotMatch|InvalidObjectState|not found|no such")
_TRANSIENT = re.compile(r"(?i)\b(429|500|502|503|504)\b|Service Unavailable|SlowDown|ServerBusy|Internal ?Error"
                        r"|Connection reset|Broken pipe|timed out|timeout|RequestTimeout|Too Many Requests|temporarily")
_PERMANENT_CLASSES = ("java.io.FileNotFoundException", "java.nio.file.NoSuchFileException",
                      "java.nio.file.AccessDeniedException", "org.apache.hadoop.security.AccessControlException",
                      "org.apache.hadoop.fs.PathNotFoundException", "org.apache.hadoop.fs.PathPermissionException",
                      "org.apache.hadoop.fs.AccessDeniedException")
_TRANSIENT_CLASSES = ("java.net.SocketException", "java.net.SocketTimeoutException", "java.net.ConnectException",
                      "java.net.NoRouteToHostException")
_retries = 0
_retries_lock = threading.Lock()
T = TypeVar("T")


def is_transient(error: BaseException) -> bool:
    """Whether a failed file-system call may succeed when made again: a Java exception whose
    chain holds a socket error or a 5xx/429/timeout message, and no missing file, refused access
    (403), bad request, corrupt data or interruption. Python errors are never transient here."""
    from py4j.protocol import Py4JJavaError

    if not isinstance(error, Py4JJavaError):
        return False
    seen = False
    t, depth = error.java_exception, 0
    while t is not None and depth < 16:
        name, message = str(t.getClass().getName()), str(t.getMessage())
        if name in _PERMANENT_CLASSES or _PERMANENT.search(message):
            return False
        if name == "java.io.InterruptedIOException" or name.startswith("java.util.zip."):
            return False
        if name in _TRANSIENT_CLASSES or _TRANSIENT.search(message):
            seen = True
        cause = t.getCause()
        t = None if cause is None or cause.equals(t) else cause
        depth += 1
    return seen


def retries() -> int:
    """Calls of this module made again after a transient error, in this process so far."""
    return _retries


def _reads(fn: Callable[..., T]) -> Callable[..., T]:
    """Make ``fn`` (a read: idempotent) again after a transient error, ``ATTEMPTS`` times in all."""

    @functools.wraps(fn)
    def again(*args, **kwargs):
        global _retries
        pause = FIRST_PAUSE_S
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - re-raised unless transient
                if attempt == ATTEMPTS or not is_transient(e):
                    raise
            with _retries_lock:
                _retries += 1
            time.sleep(pause / 2 + random.uniform(0, pause / 2))
            pause *= 2
        raise AssertionError("unreachable")

    return again


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


def scheme(spark, uri: str) -> str:
    """The scheme of the file system that serves ``uri`` (``file``, ``hdfs``, ``oss``, ...); a
    plain path takes the scheme of ``fs.defaultFS``."""
    if not has_scheme(uri):
        uri = qualify(spark, uri)
    return uri.split(":", 1)[0].lower()


def local_path(spark, uri: str) -> str:
    """The local path of a ``file:`` URI."""
    return str(_path(spark, qualify(spark, uri)).toUri().getPath())


def is_root(spark, uri: str) -> bool:
    """Whether ``uri`` is the root of its file system (``oss://bucket/``, ``/``)."""
    return _path(spark, qualify(spark, uri)).getParent() is None


@_reads
def exists(spark, uri: str) -> bool:
    """Whether a file or directory exists at ``uri``."""
    p = _path(spark, uri)
    return bool(_fs(spark, p).exists(p))


@_reads
def is_dir(spark, uri: str) -> bool:
    """Whether ``uri`` is a directory (on object stores: a prefix that holds objects)."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    return bool(fs.exists(p) and fs.getFileStatus(p).isDirectory())


def delete(spark, uri: str, recursive: bool = True) -> None:
    """Delete ``uri`` if it exists."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    if exists(spark, uri):
        fs.delete(p, recursive)


def mkdirs(spark, uri: str) -> None:
    """Create the directory ``uri`` and its parents."""
    p = _path(spark, uri)
    _fs(spark, p).mkdirs(p)


def rename(spark, src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``, which must not exist; raise ``OSError`` if the file system refuses.

    On HDFS and local disk this is one atomic step; on object stores it is a copy and a delete per
    object.
    """
    s, d = _path(spark, src), _path(spark, dst)
    fs = _fs(spark, s)
    if fs.exists(d):
        raise OSError(f"cannot rename onto an existing path: {dst}")
    parent = d.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    if not fs.rename(s, d):
        raise OSError(f"rename failed: {src} -> {dst}")


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


@_reads
def read_bytes(spark, uri: str) -> bytes:
    """Read a small file from ``uri``."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    stream = fs.open(p)
    try:
        buf = _jvm(spark).java.io.ByteArrayOutputStream()
        _jvm(spark).org.apache.hadoop.io.IOUtils.copyBytes(stream, buf, 65536, False)
        return bytes(buf.toByteArray())
    finally:
        stream.close()


@_reads
def read_range(spark, uri: str, offset: int, length: int) -> bytes:
    """Read ``length`` bytes of the file at ``uri`` from ``offset``, which must lie inside it."""
    jvm = _jvm(spark)
    p = _path(spark, uri)
    stream = _fs(spark, p).open(p)
    try:
        stream.seek(offset)
        buf = jvm.java.io.ByteArrayOutputStream()
        # (in, out, offset, length): exactly ``length`` bytes, fewer only at the end of the file
        jvm.org.apache.commons.io.IOUtils.copyLarge(stream, buf, 0, length)
        return bytes(buf.toByteArray())
    finally:
        stream.close()


def read_text(spark, uri: str) -> str:
    """Read a small UTF-8 file from ``uri``."""
    return read_bytes(spark, uri).decode("utf-8")


@_reads
def read_through(spark, uri: str) -> None:
    """Read the whole file at ``uri`` as Spark's text reader would, decompressing by its name
    (``.gz``), and discard it: raises the reader's error when the file cannot be read to its end."""
    jvm = _jvm(spark)
    p = _path(spark, uri)
    fs = _fs(spark, p)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(
        spark.sparkContext._jsc.hadoopConfiguration()).getCodec(p)
    stream = fs.open(p)
    if codec is not None:
        stream = codec.createInputStream(stream)
    try:
        sink = jvm.org.apache.commons.io.output.NullOutputStream.INSTANCE
        jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, sink, 1 << 20, False)
    finally:
        stream.close()


@dataclass(frozen=True)
class FileInfo:
    """One file of a listing."""

    path: str
    size: int


@_reads
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


@dataclass(frozen=True)
class FileStatus:
    """A file's name, size and modification time (ms since the epoch), as its directory lists it."""

    name: str
    size: int
    mtime: int


@_reads
def list_status(spark, uri: str) -> dict[str, FileStatus]:
    """The files directly under the directory ``uri`` by name (one listing request), or {}."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    if not fs.exists(p) or not fs.getFileStatus(p).isDirectory():
        return {}
    out = {}
    for st in fs.listStatus(p):
        if st.isFile():
            name = str(st.getPath().getName())
            out[name] = FileStatus(name, int(st.getLen()), int(st.getModificationTime()))
    return out


@_reads
def file_status(spark, uri: str) -> FileStatus:
    """The status of the one file at ``uri``."""
    p = _path(spark, uri)
    st = _fs(spark, p).getFileStatus(p)
    return FileStatus(str(st.getPath().getName()), int(st.getLen()), int(st.getModificationTime()))


@_reads
def list_names(spark, uri: str) -> list[str]:
    """The names directly under the directory ``uri`` (files and directories), or [] if absent."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    if not fs.exists(p) or not fs.getFileStatus(p).isDirectory():
        return []
    return sorted(str(st.getPath().getName()) for st in fs.listStatus(p))


@_reads
def list_tree(spark, uri: str) -> list[tuple[str, int]]:
    """Every file under ``uri`` (recursively) as (path relative to ``uri``, size). For small trees,
    such as a model directory or one job's output."""
    p = _path(spark, uri.rstrip("/"))
    fs = _fs(spark, p)
    if not fs.exists(p):
        return []
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


def encoded_uri(spark, path: str, encoded: bool = False) -> str:
    """The percent-encoded URI of a file, as Spark's ``_metadata.file_path`` gives it; ``path``
    is a plain path or URI, or (``encoded``) an already encoded URI in another spelling."""
    jvm = _jvm(spark)
    p = jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(path)) if encoded else _path(spark, path)
    uri = str(_fs(spark, p).makeQualified(p).toUri().toString())
    # Spark spells local files file:/x; java.net.URI keeps an empty authority as file:///x.
    return "file:/" + uri[len("file:///"):] if uri.startswith("file:///") else uri


def escape_glob(path: str) -> str:
    """Escape glob characters so that DataFrameReader takes ``path`` literally."""
    return _GLOB_CHARS.sub(r"\\\1", path)


@_reads
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


def _java_class(error: BaseException) -> str:
    java = getattr(error, "java_exception", None)
    try:
        return str(java.getClass().getName()) if java is not None else ""
    except Exception:  # noqa: BLE001 - the gateway is gone
        return ""


def create_new(spark, uri: str, data: bytes) -> bool:
    """Create the file ``uri`` holding ``data`` only if nothing is there; False if something is.

    ``FileSystem.create(path, overwrite=false)``: one atomic step on HDFS (the NameNode refuses
    an existing name); on object-store connectors a check and then a write.
    """
    p = _path(spark, uri)
    try:
        out = _fs(spark, p).create(p, False)
    except Exception as e:  # noqa: BLE001 - py4j wraps the Java exception
        if any(k in _java_class(e) for k in ("FileAlreadyExists", "AlreadyBeingCreated")):
            return False
        raise
    try:
        out.write(bytearray(data))
    finally:
        out.close()
    return True


def read_bytes_if_there(spark, uri: str) -> bytes | None:
    """The bytes of the small file ``uri``, or None if there is no such file."""
    try:
        return read_bytes(spark, uri)
    except Exception as e:  # noqa: BLE001
        if "FileNotFound" in _java_class(e):
            return None
        raise


def remove_empty_dir(spark, uri: str) -> bool:
    """Remove the directory ``uri`` if it is empty, in one step where the file system has one
    (local disk, HDFS); True if it is gone. On object stores a directory is a key prefix and
    this does nothing."""
    if scheme(spark, uri) == "file":
        import os

        try:
            os.rmdir(local_path(spark, uri))
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True
    if scheme(spark, uri) in ("hdfs", "viewfs"):
        p = _path(spark, uri)
        try:
            return bool(_fs(spark, p).delete(p, False))
        except Exception:  # noqa: BLE001 - not empty
            return False
    return False

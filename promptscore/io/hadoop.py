"""Files through the cluster's Hadoop FileSystem (oss://, hdfs://, file://, plain paths).

Everything goes through the JVM of the active SparkSession, so the connector and the credentials
the cluster is configured with (JindoSDK and the ECS RAM role on EMR) are the ones used. Plain
paths resolve against ``fs.defaultFS`` exactly as Spark resolves them.

Reads, listings and status calls that fail with a transient error (``errors.is_transient``: a 5xx
or 429 answer, a reset or timed-out connection) are made again, up to ``ATTEMPTS`` times with growing
pauses, and counted (``retries()``). Writes, renames and deletes are not: the connector's own
retries cover them, and the jobs' journals make a failed one safe to run again.
"""

from __future__ import annotations

import functools
import os
import random
import re
import threading
import time
from typing import Callable, TypeVar

from promptscore import errors, sparkapi
from udfs.uris import has_scheme

_GLOB_CHARS = re.compile(r"([\\*?\[\]{}])")
ATTEMPTS = 5
FIRST_PAUSE_S = 0.2
_retries = 0
_retries_lock = threading.Lock()
T = TypeVar("T")


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
            except Exception as e:
                if attempt == ATTEMPTS or not errors.is_transient(e):
                    raise
            with _retries_lock:
                _retries += 1
            time.sleep(pause / 2 + random.uniform(0, pause / 2))
            pause *= 2
        raise AssertionError("unreachable")

    return again


def _path(spark, uri: str):
    return sparkapi.jvm(spark).org.apache.hadoop.fs.Path(uri)


def _fs(spark, path):
    return path.getFileSystem(sparkapi.hadoop_conf(spark))


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


def exists(spark, uri: str) -> bool:
    """Whether a file or directory exists at ``uri``."""
    return kind(spark, uri) is not None


def is_dir(spark, uri: str) -> bool:
    """Whether ``uri`` is a directory (on object stores: a prefix that holds objects)."""
    return kind(spark, uri) == "dir"


@_reads
def kind(spark, uri: str) -> str | None:
    """What is at ``uri``: ``"file"``, ``"dir"`` or None, from one status request."""
    try:
        st = _fs(spark, p := _path(spark, uri)).getFileStatus(p)
    except Exception as e:
        if _java_class(e).endswith("FileNotFoundException"):
            return None
        raise
    return "dir" if st.isDirectory() else "file"


def delete(spark, uri: str, recursive: bool = True) -> None:
    """Delete ``uri`` if it exists (one request: ``FileSystem.delete`` answers false for nothing)."""
    p = _path(spark, uri)
    _fs(spark, p).delete(p, recursive)


def mkdirs(spark, uri: str) -> None:
    """Create the directory ``uri`` and its parents."""
    p = _path(spark, uri)
    _fs(spark, p).mkdirs(p)


def rename(spark, src: str, dst: str, checked: bool = False) -> None:
    """Rename ``src`` to ``dst``, which must not exist; raise ``OSError`` if the file system refuses.
    One atomic step on HDFS and local disk; on object stores a copy and a delete per object.
    ``checked``: the caller has just seen nothing at ``dst`` and made its folder: not asked again."""
    s, d = _path(spark, src), _path(spark, dst)
    fs = _fs(spark, s)
    if not checked:
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
        buf = sparkapi.jvm(spark).java.io.ByteArrayOutputStream()
        sparkapi.jvm(spark).org.apache.hadoop.io.IOUtils.copyBytes(stream, buf, 65536, False)
        return bytes(buf.toByteArray())
    finally:
        stream.close()


@_reads
def read_range(spark, uri: str, offset: int, length: int) -> bytes:
    """Read ``length`` bytes of the file at ``uri`` from ``offset``, which must lie inside it."""
    jvm = sparkapi.jvm(spark)
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
    jvm = sparkapi.jvm(spark)
    p = _path(spark, uri)
    fs = _fs(spark, p)
    codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(sparkapi.hadoop_conf(spark)).getCodec(p)
    stream = fs.open(p)
    if codec is not None:
        stream = codec.createInputStream(stream)
    try:
        sink = jvm.org.apache.commons.io.output.NullOutputStream.INSTANCE
        jvm.org.apache.hadoop.io.IOUtils.copyBytes(stream, sink, 1 << 20, False)
    finally:
        stream.close()


# Listings, as plain values: ``promptscore.io.files`` turns them into its File records.


@_reads
def list_dir(spark, uri: str, only_dir: bool = False) -> list[tuple[str, str, bool, int, int]]:
    """(path, name, is a file, size, modification ms) of each entry directly under ``uri`` (one
    listing request); [] when nothing is there or, with ``only_dir``, when ``uri`` is no directory."""
    found = kind(spark, uri)
    if found is None or only_dir and found != "dir":
        return []
    p = _path(spark, uri)
    return [(str(st.getPath().toString()), str(st.getPath().getName()), bool(st.isFile()), int(st.getLen()),
             int(st.getModificationTime())) for st in _fs(spark, p).listStatus(p)]


@_reads
def list_recursive(spark, uri: str) -> tuple[str, list[tuple[str, int, int]]]:
    """The qualified form of ``uri`` and (path, size, modification ms) of every file under it, at
    any depth ([] when nothing is there). For small trees: a model directory, one job's output."""
    p = _path(spark, uri)
    fs = _fs(spark, p)
    base = str(fs.makeQualified(p).toString())
    if not fs.exists(p):
        return base, []
    files = []
    it = fs.listFiles(p, True)
    while it.hasNext():
        st = it.next()
        files.append((str(st.getPath().toString()), int(st.getLen()), int(st.getModificationTime())))
    return base, files


@_reads
def status(spark, uri: str) -> tuple[str, int, int]:
    """(name, size, modification ms) of the one file at ``uri``."""
    p = _path(spark, uri)
    st = _fs(spark, p).getFileStatus(p)
    return str(st.getPath().getName()), int(st.getLen()), int(st.getModificationTime())


def glob(spark, pattern: str) -> list[str]:
    """The paths that match the Hadoop glob ``pattern`` (``*``, ``?``, ``{a,b}``)."""
    p = _path(spark, pattern)
    return [str(st.getPath().toString()) for st in (_fs(spark, p).globStatus(p) or [])]


def checksums(spark, uris: list[str], threads: int = 16) -> list[str | None]:
    """The content checksum of each file, as ``kind:value`` (one request per file, ``threads`` at a
    time): the object store's ETag where the file status carries one (Hadoop's ``EtagSource``,
    3.3.5+ connectors), else ``FileSystem.getFileChecksum`` (HDFS: MD5 of its block checksums);
    None where neither answers (local disk)."""
    from concurrent.futures import ThreadPoolExecutor

    jvm = sparkapi.jvm(spark)
    try:
        etag_source = jvm.java.lang.Class.forName("org.apache.hadoop.fs.EtagSource")
    except Exception:  # noqa: BLE001 - Hadoop before 3.3.2
        etag_source = None

    def one(uri: str) -> str | None:
        p = _path(spark, uri)
        fs = _fs(spark, p)
        if etag_source is not None:
            st = fs.getFileStatus(p)
            if etag_source.isInstance(st):
                tag = st.getEtag()
                if tag:
                    return f"etag:{str(tag).strip(chr(34)).lower()}"
        c = fs.getFileChecksum(p)
        return None if c is None else f"{c.getAlgorithmName()}:{bytes(c.getBytes()).hex()}"

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, uris))


def copy_head(spark, uri: str, local: str, max_bytes: int, size: int | None = None) -> int:
    """Copy the first ``max_bytes`` of the file at ``uri`` to the local file ``local``, in the JVM
    (much faster than bytes through py4j); returns the file's whole size (``size``, when the
    caller knows it from a listing, else asked)."""
    jvm = sparkapi.jvm(spark)
    p = _path(spark, uri)
    fs = _fs(spark, p)
    if size is None:
        size = int(fs.getFileStatus(p).getLen())
    # copyInputStreamToFile closes the stream.
    head = jvm.org.apache.commons.io.input.BoundedInputStream(fs.open(p), min(size, max_bytes))
    jvm.org.apache.commons.io.FileUtils.copyInputStreamToFile(head, jvm.java.io.File(local))
    return size


def sha256_range(spark, uri: str, offset: int, length: int, buffer: int = 8 << 20) -> bytes:
    """SHA-256 of ``length`` bytes of the file at ``uri`` from ``offset``, computed in the JVM (the
    range streams through a digest into a null sink; only the 32-byte digest crosses to Python).
    Raises OSError when the file is shorter."""
    jvm = sparkapi.jvm(spark)
    md = jvm.java.security.MessageDigest.getInstance("SHA-256")
    p = _path(spark, uri)
    stream = _fs(spark, p).open(p)
    try:
        stream.seek(offset)
        digesting = jvm.java.security.DigestInputStream(jvm.java.io.BufferedInputStream(stream, buffer), md)
        copied = jvm.org.apache.commons.io.IOUtils.copyLarge(
            digesting, jvm.org.apache.commons.io.output.NullOutputStream.INSTANCE, 0, length)
    finally:
        stream.close()
    if int(copied) != length:
        raise OSError(f"{uri} is shorter than it was listed ({offset + int(copied)} < {offset + length} bytes)")
    return bytes(md.digest())


def uri_to_path(spark, uri: str) -> str:
    """Turn a percent-encoded file URI (as Spark lists files) back into a plain path string."""
    return sparkapi.jvm(spark).org.apache.hadoop.fs.Path(sparkapi.jvm(spark).java.net.URI(uri)).toString()


def encoded_uri(spark, path: str, encoded: bool = False) -> str:
    """The percent-encoded URI of a file, as Spark's ``_metadata.file_path`` gives it; ``path``
    is a plain path or URI, or (``encoded``) an already encoded URI in another spelling."""
    jvm = sparkapi.jvm(spark)
    p = jvm.org.apache.hadoop.fs.Path(jvm.java.net.URI(path)) if encoded else _path(spark, path)
    uri = str(_fs(spark, p).makeQualified(p).toUri().toString())
    # Spark spells local files file:/x; java.net.URI keeps an empty authority as file:///x.
    return "file:/" + uri[len("file:///"):] if uri.startswith("file:///") else uri


def escape_glob(path: str) -> str:
    """Escape glob characters so that DataFrameReader takes ``path`` literally."""
    return _GLOB_CHARS.sub(r"\\\1", path)


def file_size(spark, uri: str) -> int:
    """The length of the file at ``uri`` in bytes."""
    return status(spark, uri)[1]


def _java_class(error: BaseException) -> str:
    chain = sparkapi.java_chain(error, 1)
    return chain[0][0] if chain else ""


def create_new(spark, uri: str, data: bytes) -> bool:
    """Create the file ``uri`` holding ``data`` only if nothing is there; False if something is.

    ``FileSystem.create(path, overwrite=false)``: one atomic step on HDFS (the NameNode refuses
    an existing name); on object-store connectors a check and then a write.
    """
    p = _path(spark, uri)
    try:
        out = _fs(spark, p).create(p, False)
    except Exception as e:
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
    except Exception as e:
        if "FileNotFound" in _java_class(e):
            return None
        raise


def remove_empty_dir(spark, uri: str) -> bool:
    """Remove the directory ``uri`` if it is empty, in one step where the file system has one
    (local disk, HDFS); True if it is gone. On object stores a directory is a key prefix and
    this does nothing."""
    if scheme(spark, uri) == "file":
        try:
            os.rmdir(local_path(spark, uri))
        except FileNotFoundError:
            pass
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

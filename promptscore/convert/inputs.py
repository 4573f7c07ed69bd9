"""The convert job's input: which files are read, which are skipped and why, and, with
``--only-new``, which ones other partitions of the output hold already (``promptscore.convert.ledger``).

One listing serves everything: Spark's file index over every ``--input`` (recursive), without a
name filter, so that files the job skips by name are seen and counted. The lines are read only
from ``*.jsonl`` and ``*.jsonl.gz`` files: a filter on the file-name metadata column, which Spark
applies to the listing before any file is opened. Spark itself never lists names starting with
``_`` or ``.`` (Hadoop's hidden files: ``_SUCCESS``, ``.crc``, a ``_temporary/`` folder).
"""

from __future__ import annotations

import errno
import glob
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from promptscore import errors, sparkapi
from promptscore.convert import ledger, reader
from promptscore.convert.options import ConvertOptions
from promptscore.io import hadoop, lists, output
from promptscore.io.files import File, folders, index_files, lines_of, with_checksums
from udfs.uris import redact

SUFFIXES = (".jsonl", ".jsonl.gz")
INPUT_NAMES = "*.jsonl, *.jsonl.gz"
HIDDEN_RULE = "names starting with '_' or '.' are never listed (Hadoop's hidden files)"


def is_input_name(name: Column) -> Column:
    """Whether a file name (a column) is one the job reads."""
    cond = F.lit(False)
    for suffix in SUFFIXES:
        cond = cond | name.endswith(suffix)
    return cond


def is_data_name(name: str) -> bool:
    """Whether Spark's scan opens a file of this name: Spark lists ``_metadata*`` and
    ``_common_metadata*`` (Parquet's) but reads no name starting with ``_`` (without ``=``) or
    ``.``. The same in a URI's last segment, where neither character is encoded."""
    return not ((name.startswith("_") and "=" not in name) or name.startswith("."))


def list_lines(spark: SparkSession, inputs: Sequence[str]) -> DataFrame:
    """Every line of every file under ``inputs``, at any depth, names unfiltered (see
    ``input_lines``). One column, ``value``; the file is in ``_metadata``."""
    from pyspark.errors import AnalysisException

    check_symlink_loops(spark, inputs)
    try:
        return spark.read.option("recursiveFileLookup", "true").text(list(inputs))
    except AnalysisException as e:
        text = str(e)
        if "PATH_NOT_FOUND" in text or "Path does not exist" in text:
            raise errors.UsageError(f"input not found: {redact(errors.first_line(text))}") from None
        raise


def check_symlink_loops(spark: SparkSession, inputs: Sequence[str]) -> None:
    """Refuse (exit 2, naming the link) a local input that holds a symbolic link leading back to a
    folder above it, such as ``loop -> .``: Hadoop's local file system follows links, so Spark's
    listing would go round it until the driver runs out of memory. Other file systems (OSS, HDFS)
    have no such links to follow."""
    for uri in inputs:
        if hadoop.scheme(spark, uri) != "file":
            continue
        root = hadoop.local_path(spark, uri)
        for start in (glob.glob(root) if glob.has_magic(root) else [root]):
            loop = find_symlink_loop(start)
            if loop:
                link, target = loop
                raise errors.UsageError(f"input {redact(uri)} holds a symbolic link loop: {link} -> {target} leads "
                                     "back to a folder above it, so listing the input would never end; remove the "
                                     "link, or pass the folders beside it as --input")


def find_symlink_loop(root: str) -> tuple[str, str] | None:
    """The first symbolic link under the local folder ``root`` (followed as Hadoop follows them)
    that leads to a folder above it or to itself, as (link, what it points to); None if there is
    none. Names that Spark never lists (starting with ``.``, or ``_`` without ``=``) are not
    entered."""
    if not os.path.isdir(root):
        return None
    todo = [(root, (os.path.realpath(root),))]
    while todo:
        folder, above = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # unreadable: Spark's listing reports it
        for entry in entries:
            name = entry.name
            if name.startswith(".") or (name.startswith("_") and "=" not in name):
                continue
            if entry.is_symlink():
                try:
                    real = os.path.realpath(entry.path, strict=True)
                except OSError as e:
                    if e.errno == errno.ELOOP:  # a link to itself, or a ring of links
                        return entry.path, os.readlink(entry.path)
                    continue  # dangling: Hadoop skips it
                if not os.path.isdir(real):
                    continue
                if real in above:
                    return entry.path, os.readlink(entry.path)
                todo.append((entry.path, above + (real,)))
            elif entry.is_dir(follow_symlinks=False):
                todo.append((entry.path, above + (os.path.join(above[-1], name),)))
    return None


def input_lines(listed: DataFrame, excluded: Iterable[str] = ()) -> DataFrame:
    """The lines of the input files only: ``list_lines`` filtered by file name, and without the
    files in ``excluded`` (URIs as ``_metadata.file_path`` gives them). Spark prunes the listing
    with these filters, so skipped and excluded files are never opened."""
    meta = F.col("_metadata")
    cond = is_input_name(meta["file_name"])
    excluded = sorted(set(excluded))
    if excluded:
        cond = cond & ~meta["file_path"].isin(excluded)
    return listed.where(cond)


@dataclass
class InputIndex:
    """What the listing found: the input files (with at least one byte), the files skipped by
    name, empty files, and a sample of input files."""

    files: int
    bytes: int
    sample: list[str]
    skipped: dict = field(default_factory=dict)
    empty_files: int = 0
    input_list: dict | None = None  # --input-list: entries, duplicates (FileList.facts)
    only_new: dict | None = None  # --only-new: files already ingested, changed since
    sample_files: list[File] = field(default_factory=list)  # the sample with sizes and times, when known


def index_inputs(spark: SparkSession, listed: DataFrame, lines: DataFrame, sample_files: int) -> InputIndex:
    """Counts and sizes from Spark's own index (no second listing, no request), the skipped files
    by rule with a few examples, and a deterministic, well-spread sample of input files (Spark
    returns files in hash order, that of their full URIs; every k-th file with an input name that
    Spark reads is taken, never a ``_metadata.jsonl``; an empty file may be). Counted in one pass
    in the JVM (``ListingFacts``); where this Spark's internals differ, by pruned scans of the
    index."""
    facts = _listing_facts(spark, listed, sample_files)
    if facts is None:
        return _index_by_scans(spark, listed, lines, sample_files)
    n_files, skipped_n = facts["files"], facts["skipped"]
    skipped = {"files": skipped_n, "bytes": facts["skipped_bytes"],
               "by_rule": {"other_name": skipped_n} if skipped_n else {},
               "examples": sorted(redact(p) for p in facts["examples"]), "hidden": HIDDEN_RULE}
    sample = sorted(facts["sample"])
    known = sorted(File(path, size, mtime) for path, size, mtime in facts["known"])
    return InputIndex(n_files, facts["bytes"], sample, skipped, max(0, facts["total"] - n_files - skipped_n),
                      sample_files=known if [f.path for f in known] == sample else [])


def _listing_facts(spark: SparkSession, listed: DataFrame, sample_files: int) -> dict | None:
    """``ListingFacts.describe`` of the listing (see ``index_inputs``), or None where the jar's
    class or Spark's index cannot be reached."""
    try:
        facts = getattr(sparkapi.jvm(spark), reader.FACTS_CLASS).describe(
            sparkapi.file_index(listed), sparkapi.input_files(listed), "\u0000".join(SUFFIXES), sample_files, 5)
    except Exception as e:
        if not sparkapi.is_py4j_error(e) and not isinstance(e, (ValueError, TypeError)):
            raise
        return None
    return json.loads(facts)


def _index_by_scans(spark: SparkSession, listed: DataFrame, lines: DataFrame, sample_files: int) -> InputIndex:
    """``index_inputs`` from the metrics of pruned scans of Spark's index and a filtered scan for
    the sample's statuses."""
    all_files = sparkapi.input_files(listed)
    total = len(all_files)
    others = listed.where(~is_input_name(F.col("_metadata.file_name")))
    n_files, n_bytes = sparkapi.scan_size(lines)
    skipped_n, skipped_bytes = sparkapi.scan_size(others)
    skipped = {"files": skipped_n, "bytes": skipped_bytes,
               "by_rule": {"other_name": skipped_n} if skipped_n else {}, "examples": [],
               "hidden": HIDDEN_RULE}
    if skipped_n:
        skipped["examples"] = _skipped_examples(spark, others)

    want = min(sample_files, n_files)
    picked: list[str] = []
    if want:
        step = max(1, total // want)
        i = 0
        while len(picked) < want and i < total:
            uri = str(all_files[i])
            if uri.endswith(SUFFIXES) and is_data_name(uri.rsplit("/", 1)[-1]):
                picked.append(uri)
                i += step
            else:
                i += 1
    sample = sorted(hadoop.uri_to_path(spark, u) for u in picked)
    return InputIndex(n_files, n_bytes, sample, skipped, max(0, total - n_files - skipped_n),
                      sample_files=_known_sample(spark, lines, picked, sample))


def _known_sample(spark: SparkSession, lines: DataFrame, picked: list[str], sample: list[str]) -> list[File]:
    """The sampled files with the sizes and times of Spark's listing (no request), or [] where
    this Spark does not say."""
    if not picked:
        return []
    names = [hadoop.encoded_uri(spark, u, encoded=True) for u in picked]  # as _metadata spells them
    known = sparkapi.scan_files(lines.where(F.col("_metadata.file_path").isin(names)))
    files = sorted(File(path, size, mtime) for path, size, mtime in known or [])
    return files if [f.path for f in files] == sample else []


def _skipped_examples(spark: SparkSession, others: DataFrame, n: int = 5) -> list[str]:
    """Up to ``n`` skipped files, named from the listing Spark holds (none of them is opened)."""
    known = sparkapi.scan_files(others, limit=n)
    if known is not None:
        return sorted(redact(path) for path, _, _ in known)
    rows = others.select(F.col("_metadata.file_path").alias("p")).distinct().limit(n).collect()
    return sorted(redact(hadoop.uri_to_path(spark, r.p)) for r in rows)


def spread_sample(paths: Sequence[str], n: int) -> list[str]:
    """``n`` of ``paths``, spread evenly over them (deterministic)."""
    if n <= 0 or not paths:
        return []
    ordered = sorted(paths)
    step = max(1, len(ordered) // n)
    return ordered[::step][:n]


# ---------------------------------------------------------------------------------------------
# What a run reads


def select_input(spark: SparkSession, opts: ConvertOptions, target: str | None) -> tuple[DataFrame, InputIndex,
                                                                                        list[File] | None, int]:
    """The lines to read and what the listing found: from a prefix listing (Spark's index) or a
    list of files (``--input-list``); with ``--only-new``, only files no other partition of the
    output holds, and changed files as ``--changed-files`` says. Returns the lines (``None``
    when there is nothing to read; with ``_metadata``), the index, the files when known one by
    one, and how many input files were left out (already ingested, or changed and skipped)."""
    listed_info = None
    if opts.input_list:
        named = lists.read_list(spark, opts.input_list)
        listed_info = named.facts()
        if target:
            output.check_overlap(spark, target, folders(named.files))
        listed_files = [f for f in named.files if f.path.endswith(SUFFIXES) and f.size > 0]
        others = [f for f in named.files if not f.path.endswith(SUFFIXES)]
        skipped = {"files": len(others), "bytes": sum(f.size for f in others),
                   "by_rule": {"other_name": len(others)} if others else {},
                   "examples": [redact(f.path) for f in others[:5]], "hidden": HIDDEN_RULE}
        empty = sum(1 for f in named.files if f.path.endswith(SUFFIXES) and f.size == 0)
        listed = None
    else:
        listed = list_lines(spark, opts.inputs)
        lines = input_lines(listed)
        index = index_inputs(spark, listed, lines, opts.sample_files)
        if not (opts.only_new or opts.out.partition_col):
            return lines, index, None, 0
        # A partition records the files it holds (the ledger), so a later --only-new run knows them.
        listed_files = [f for f in index_files(listed) if f.path.endswith(SUFFIXES) and f.size > 0]
        if not opts.only_new:
            return lines, index, listed_files, 0
        skipped, empty = index.skipped, index.empty_files
    left_out = 0
    only_new = None
    if opts.only_new and target:
        if _file_checksums(spark):
            listed_files = with_checksums(spark, listed_files)
        sel = ledger.compare(listed_files, ledger.held_versions(spark, opts.out.output, target))
        only_new = only_new_facts(sel, opts.changed_policy, any(f.checksum for f in listed_files))
        if sel.changed and opts.changed_policy == "error" and not opts.plan:
            raise errors.DataQualityError(changed_files_message(sel, opts.out.output))
        listed_files = sel.new + ([f for f, _ in sel.changed] if opts.changed_policy == "reingest" else [])
        listed_files.sort()
        left_out = len(sel.same) + (len(sel.changed) if opts.changed_policy == "skip" else 0)
    sample = spread_sample([f.path for f in listed_files], opts.sample_files)
    chosen = set(sample)
    index = InputIndex(len(listed_files), sum(f.size for f in listed_files), sample, skipped, empty,
                       listed_info, only_new, sorted(f for f in listed_files if f.path in chosen))
    if not listed_files:
        return None, index, [], left_out  # type: ignore[return-value]
    return lines_of(spark, listed_files), index, listed_files, left_out


def only_new_facts(sel: ledger.Selection, policy: str, checksums: bool) -> dict:
    """The ``only_new`` part of the report: files already ingested, and changed files (how many,
    what was done with them, examples)."""
    return {
        "already_ingested_files": len(sel.same),
        "new_files": len(sel.new),
        "changed_files": len(sel.changed),
        "changed_files_policy": policy,
        "changed_files_examples": sel.examples(),
        "compared": "path, size, modification time (s)" + (", checksum" if checksums else ""),
    }


def changed_files_message(sel: ledger.Selection, out: str) -> str:
    """The one line of exit 3 for changed files under ``--changed-files error``."""
    shown = "; ".join(f"{e['file']} (in {e['partition']}: {e['was']['size']:,} B at {e['was']['mtime']}, now "
                      f"{e['now']['size']:,} B at {e['now']['mtime']})" for e in sel.examples(3))
    more = f" and {len(sel.changed) - 3:,} more" if len(sel.changed) > 3 else ""
    return (f"{len(sel.changed):,} input files changed since another partition of {redact(out)} ingested them: "
            f"{shown}{more}. Converting them again would put their earlier lines into the output twice; pass "
            "--changed-files reingest to convert them again whole anyway (the earlier lines stay in that "
            "partition), or --changed-files skip to leave them out; nothing was written")


def _file_checksums(spark: SparkSession) -> bool:
    value = (spark.conf.get("spark.promptscore.convert.fileChecksums", "false") or "false").strip().lower()
    if value not in ("true", "false"):
        raise errors.UsageError(f"spark.promptscore.convert.fileChecksums must be true or false, not {value!r}")
    return value == "true"

"""What the convert job takes: ``ConvertOptions``, which checks itself when made (from the command
line or in code alike), and the command line of ``jobs/convert.py``, built from its fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from promptscore import cli, flags
from promptscore.convert.ledger import POLICIES
from promptscore.errors import UsageError
from promptscore.flags import option
from promptscore.io.output import OutputSpec


def _names(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


@dataclass
class ConvertOptions:
    """Everything the convert job takes; built from the command line (``from_args``) or directly
    in code, and checked the same way either way (``UsageError``, exit 2)."""

    inputs: list[str] = option(flag="--input", action="append", metavar="URI",
                               help="input prefix or file (oss://, hdfs://, file://, plain path); repeatable")
    out: OutputSpec
    input_list: str | None = option(None, metavar="URI", help=(
        "convert the files this names instead of listing a prefix: a text file of URIs or paths, one per line, or an "
        "OSS Bucket Inventory report's manifest.json"))
    only_new: bool = option(False, action="store_true", help=(
        "convert only input files (by path, size and time) that no other partition of --output holds; needs "
        "--partition-col. The partition records them under _ingested/"))
    changed_files: str | None = option(None, choices=POLICIES, help=(
        "with --only-new: what to do with input files that another partition holds an earlier version of (appended "
        "to, rewritten): error (default: exit 3 naming them, nothing written), reingest (convert them again whole; "
        "the earlier version's lines stay where they are, so those lines are then in the output twice), skip "
        "(leave them out)"))
    plan: bool = option(False, action="store_true", help=(
        "list, sample and print what the run would do and how long it would take, and write it with --report; "
        "writes no data (--output optional)"))
    cores: int | None = option(None, type=int, metavar="N", help=(
        "with --plan: estimate for a cluster of N cores (default: this session's task slots)"))
    tasks_per_core: int = option(1, type=int, metavar="K",
                                 help="with --plan: task slots per core in that cluster (default 1)")
    request_latency_ms: float | None = option(None, type=float, metavar="MS", help=(
        "with --plan: the object store's time to first byte per request (default: 0 for local and HDFS paths, 30 "
        "for object stores)"))
    schema: str | None = option(None, metavar="DDL", help=(
        "Spark DDL of the records, e.g. 'id string, prompt string, turns bigint' (types: string, boolean, tinyint, "
        "smallint, int, bigint, float, double, decimal, struct, array, map<string,...>); default: inferred from "
        "--sample-files files"))
    sample_files: int = option(32, type=int, metavar="N", help=(
        "files read to infer the schema and estimate compression (default 32; 0 needs --schema)"))
    target_file_size: int = option(256 << 20, type=cli.parse_size, metavar="SIZE",
                                   help="aim for output files of this size (default 256m)")
    max_bad_fraction: float = option(0.001, type=cli.fraction, metavar="F", help=(
        "exit 3 if more than this fraction of non-blank lines is rejected (default 0.001); a file that cannot be "
        "read counts as its size over the mean line size"))
    with_source_file: bool = option(False, action="store_true",
                                    help="add a source_file column (the input file's URI)")
    required_fields: list[str] = option(default_factory=lambda: ["prompt"], type=_names, metavar="A,B", help=(
        "lines whose JSON lacks any of these (or has null) are rejected (default prompt; '' for none)"))
    max_line_bytes: int = option(64 << 20, type=cli.parse_size, metavar="SIZE",
                                 help="longer lines are rejected as line_too_long (default 64m)")
    strict_schema: bool = option(False, action="store_true", help=(
        "reject lines that carry fields the schema lacks, at any depth (unknown_field), instead of writing them "
        "without those fields"))

    def __post_init__(self) -> None:
        flags.check_choices(self)
        if self.sample_files < 0:
            raise UsageError("--sample-files must be 0 or more")
        if self.sample_files == 0 and not self.schema:
            raise UsageError("--sample-files 0 needs --schema")
        if self.max_line_bytes > (1 << 31) - 1:
            raise UsageError("--max-line-bytes must be below 2g (a line is one JVM string)")
        if bool(self.inputs) == bool(self.input_list):
            raise UsageError("give --input (one or more prefixes) or --input-list, not both and not neither")
        if self.changed_files and not self.only_new:
            raise UsageError("--changed-files goes with --only-new")
        if self.only_new and not self.out.partition_col and not self.plan:
            raise UsageError("--only-new needs --partition-col: each run writes the new files into its own "
                             "partition, with the ledger of what it converted")
        if not self.out.output and not self.plan:
            raise UsageError("the following arguments are required: --output (see --help)")
        if self.cores is not None and self.cores < 1 or self.tasks_per_core < 1:
            raise UsageError("--cores and --tasks-per-core must be at least 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ConvertOptions":
        """The options of a command line parsed by ``convert_parser``."""
        given = flags.given(args, cls)
        return cls(inputs=given.pop("inputs", []), out=OutputSpec.from_args(args), **given)

    @property
    def changed_policy(self) -> str:
        """What ``--only-new`` does with changed files (``--changed-files``, default ``error``)."""
        return self.changed_files or "error"

    @property
    def sources(self) -> list[str]:
        """What the run reads, as the report names it: the prefixes, or the list."""
        return self.inputs or [self.input_list or ""]


def convert_parser() -> argparse.ArgumentParser:
    """The command line of ``jobs/convert.py``: the flags of ``ConvertOptions`` and ``OutputSpec``."""
    p = cli.JobParser(
        prog="convert.py",
        description="Convert a prefix of small JSONL files (*.jsonl, *.jsonl.gz, any depth) into a "
        "few large Parquet files. Lines that cannot be rows go to <output>/_rejects/ with a reason.\n"
        "Progress: a line on stderr every 10 s (--conf spark.promptscore.progress.interval=SECONDS; 0: off).\n"
        "Read-ahead: each task keeps the next files' requests in flight (--conf "
        "spark.promptscore.convert.readAhead=FILES, default 16; 0: Spark's text source, one file after another).",
    )
    flags.add_flags(p, ConvertOptions)
    flags.add_flags(p, OutputSpec)
    return p


"""The convert job's report (``_report.json``, every field from the plan and the write), its
summary line, and the notes a run says on stderr about what it left out."""

from __future__ import annotations

from promptscore import cli, errors
from promptscore.convert.badfiles import file_reject_weight
from promptscore.convert.options import ConvertOptions
from promptscore.convert.plan import ConvertPlan
from promptscore.convert.schema import schema_ddl
from promptscore.convert.write import ConvertResult
from promptscore.io.reports import human_bytes, redact_uri


def convert_report(opts: ConvertOptions, plan: ConvertPlan, result: ConvertResult, header: dict,
                 spark_info: dict, elapsed_s: float) -> dict:
    """The job's report (pure: everything comes from the plan and the result)."""
    nonblank = result.lines - result.blank
    readable = plan.index.bytes - sum(b.size for b in result.bad_files)
    per_line = readable / result.lines if result.lines else 0.0
    file_weight = sum(file_reject_weight(b.size, per_line) for b in result.bad_files)
    rejected_total = result.rejected + file_weight
    denominator = nonblank + file_weight
    bad_fraction = rejected_total / denominator if denominator else 0.0
    too_many = bad_fraction > opts.max_bad_fraction
    reasons = dict(result.reasons)
    report = {
        **header,
        "status": "too_many_rejects" if too_many else "ok",
        "input_files": plan.index.files,
        "input_bytes": plan.index.bytes,
        "empty_files": plan.index.empty_files,
        "skipped_files": plan.index.skipped,
        "input_list_entries": plan.index.input_list,
        "only_new": plan.index.only_new,
        "lines_read": result.lines,
        "blank_lines": result.blank,
        "rows_written": nonblank - result.rejected,
        "rows_rejected": result.rejected,
        "reject_reasons": reasons,
        "files_with_rejects": len(result.reject_files),
        "files_rejected": [{"file": redact_uri(b.uri), "reason": b.reason, "detail": b.detail}
                           for b in result.bad_files],
        "files_rejected_counted_as_lines": file_weight,
        "rejects_path": redact_uri(f"{header['output']}/_rejects") if (result.rejected or result.bad_files) else None,
        "bad_fraction": round(bad_fraction, 8),
        "max_bad_fraction": opts.max_bad_fraction,
        "unknown_fields": result.unknown,
        "strict_schema": opts.strict_schema,
        "max_line_bytes": opts.max_line_bytes,
        "output_files": len(result.output_files),
        "output_bytes": sum(f.size for f in result.output_files),
        "tasks": result.tasks,
        "write_attempts": result.attempts,
        "reader": result.reader,
        "read_retries": result.read_retries,
        "target_file_size": opts.target_file_size,
        "task_slots": plan.slots,
        "max_split_bytes": plan.split,
        "estimated_compression_ratio": round(plan.ratio, 4) if plan.ratio else None,
        "compression": opts.out.compression,
        "schema": schema_ddl(plan.schema),
        "schema_source": plan.schema_source,
        "schema_sample": ({"files": plan.sample.files, "records": plan.sample.records,
                           "unusable_lines": plan.sample.unusable_lines,
                           "unreadable_files": [redact_uri(f) for f in plan.sample.unreadable_files]}
                          if plan.sample else None),
        "with_source_file": opts.with_source_file,
        **spark_info,
        "phase_s": plan.phases.phases,
        "elapsed_s": round(elapsed_s, 3),
    }
    report["summary"] = convert_summary(report)
    return report


def convert_summary(r: dict) -> str:
    """The one line the job prints on stdout."""
    files_rejected = f", {len(r['files_rejected'])} unreadable files" if r["files_rejected"] else ""
    skipped = f"; {r['skipped_files']['files']:,} other files skipped" if r["skipped_files"].get("files") else ""
    new = r.get("only_new") or {}
    if new:
        skipped += f"; {new['already_ingested_files']:,} already ingested"
        if new["changed_files"]:
            skipped += f", {new['changed_files']:,} changed ({new['changed_files_policy']})"
    return (f"convert: {r['input_files']:,} files ({human_bytes(r['input_bytes'])}) -> "
            f"{r['rows_written']:,} rows in {r['output_files']:,} files ({human_bytes(r['output_bytes'])}) "
            f"with {r['tasks']:,} tasks; {r['rows_rejected']:,} rejected{files_rejected}, "
            f"{r['blank_lines']:,} blank{skipped}; {r['elapsed_s']:.1f} s; report {r['output']}/_report.json")


def say_notes(opts: ConvertOptions, plan: ConvertPlan, report: dict, target: str) -> None:
    """Say on stderr what a finished run left out or wrote in another way than asked: nothing new
    to convert, changed files, files a list named twice, fields the schema lacks."""
    facts = plan.index.only_new or {}
    if plan.lines is None:
        changed = (f", {facts['changed_files']:,} changed since and skipped (--changed-files skip)"
                   if facts.get("changed_files") else "")
        cli.print_err(f"convert: nothing new: {facts.get('already_ingested_files', 0):,} input files are in other "
                      f"partitions of {redact_uri(opts.out.output)}{changed}; published an empty "
                      f"{redact_uri(target)}")
    elif facts.get("changed_files"):
        policy = opts.changed_policy
        done = "converted again whole" if policy == "reingest" else "left out"
        first = facts["changed_files_examples"][0]
        cli.print_err(f"convert: note: {facts['changed_files']:,} input files changed since another partition "
                      f"ingested them, {done} (--changed-files {policy}), e.g. {first['file']} (in "
                      f"{first['partition']})" + ("; the lines of their earlier versions are still in those "
                                                  "partitions" if policy == "reingest" else ""))
    listed = plan.index.input_list or {}
    if listed.get("duplicate_entries"):
        cli.print_err(f"convert: note: --input-list names {listed['duplicate_entries']:,} files more than once "
                      f"(e.g. {listed['duplicate_examples'][0]}); each was read and counted once")
    if report["unknown_fields"]["lines"] and not opts.strict_schema:
        cli.print_err(f"convert: note: {report['unknown_fields']['lines']:,} lines carry fields the schema lacks "
                      f"({', '.join(report['unknown_fields']['names'][:10])}); they were written without them "
                      "(pass --schema with those fields, or --strict-schema to reject such lines)")


def too_many_rejects(opts: ConvertOptions, report: dict) -> errors.DataQualityError:
    """Exit 3 for a report whose rejects are more than ``--max-bad-fraction`` allows."""
    return errors.DataQualityError(
        f"{report['rows_rejected'] + report['files_rejected_counted_as_lines']:,} rejected of "
        f"{report['lines_read'] - report['blank_lines'] + report['files_rejected_counted_as_lines']:,} "
        f"lines ({report['bad_fraction']:.4%} > --max-bad-fraction {opts.max_bad_fraction:g}); they are in "
        f"{report['rejects_path']}; fix the input or raise --max-bad-fraction", report)

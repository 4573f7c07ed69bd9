"""The jobs' options check themselves when made: code that builds them directly gets the errors the
command line gives (UsageError: exit 2 from ``cli.run``), and the command line builds the same options."""

from __future__ import annotations

import pytest

from promptscore.convert.options import ConvertOptions, convert_parser
from promptscore.errors import UsageError
from promptscore.io.output import OutputSpec
from promptscore.score.options import ENGINE_FLAGS, ScoreOptions, score_parser
from udfs.engines import EngineSpec


def convert(**kw) -> ConvertOptions:
    kw.setdefault("inputs", ["/in"])
    return ConvertOptions(out=kw.pop("out", OutputSpec("/out")), **kw)


def score(engine: dict | None = None, **kw) -> ScoreOptions:
    return ScoreOptions(inputs=["/in"], out=kw.pop("out", OutputSpec("/out")),
                        engine=EngineSpec(model_dir="/m", **(engine or {})), **kw)


@pytest.mark.parametrize("kw, message", [
    (dict(sample_files=-1), "--sample-files must be 0 or more"),
    (dict(sample_files=0), "--sample-files 0 needs --schema"),
    (dict(inputs=[]), "give --input (one or more prefixes) or --input-list"),
    (dict(input_list="/l.txt"), "not both and not neither"),
    (dict(changed_files="skip"), "--changed-files goes with --only-new"),
    (dict(changed_files="later", only_new=True), "argument --changed-files: invalid choice: 'later'"),
    (dict(only_new=True), "--only-new needs --partition-col"),
    (dict(out=OutputSpec("")), "the following arguments are required: --output"),
    (dict(tasks_per_core=0), "--cores and --tasks-per-core must be at least 1"),
    (dict(max_line_bytes=1 << 31), "--max-line-bytes must be below 2g"),
])
def test_convert_options_refuse_what_the_command_line_refuses(kw, message):
    with pytest.raises(UsageError) as e:
        convert(**kw)
    assert message in str(e.value)


def test_the_output_spec_checks_itself():
    with pytest.raises(UsageError, match="--partition-col and --partition-value go together"):
        OutputSpec("/out", partition_col="dt")
    with pytest.raises(UsageError, match="invalid choice: 'brotli'"):
        OutputSpec("/out", compression="brotli")


def test_the_convert_command_line_builds_the_same_options():
    args = convert_parser().parse_args(["--input", "/a", "--input", "/b", "--output", "/out",
                                        "--required-fields", "prompt,id", "--target-file-size", "1m"])
    got = ConvertOptions.from_args(args)
    assert got == convert(inputs=["/a", "/b"], required_fields=["prompt", "id"], target_file_size=1 << 20)
    assert got.sample_files == 32 and got.changed_policy == "error" and got.sources == ["/a", "/b"]


@pytest.mark.parametrize("engine, kw, message", [
    (dict(engine_args="{not json"), {}, "--engine-args is not JSON"),
    (dict(engine_args="[1]"), {}, "--engine-args must be a JSON object"),
    ({}, dict(response_col="r"), "--response-col needs --template chat"),
    (dict(max_num_seqs=0), {}, "--max-num-seqs must be at least 1"),
    (dict(gpu_memory_utilization=1.5), {}, "--gpu-memory-utilization must be in (0, 1]"),
    (dict(backend="tpu"), {}, "argument --backend: invalid choice: 'tpu'"),
    ({}, dict(template="jinja"), "argument --template: invalid choice: 'jinja'"),
    ({}, dict(partitions=0), "--partitions must be at least 1"),
    ({}, dict(compare_sample=1), "--compare-sample must be at least 2"),
    ({}, dict(compare_sample=10), "--compare-sample has nothing to compare"),
    ({}, dict(compare_dtype="float16"), "--compare-dtype goes with --compare-sample"),
    ({}, dict(plan=True, compare_sample=10, compare_dtype="float16"), "two different checks"),
    ({}, dict(plan=True, plan_sample=0.0), "--plan-sample must be a fraction in (0, 1], got 0"),
    ({}, dict(plan=True, gpus=0), "--gpus must be at least 1"),
    ({}, dict(gpus=8, calibrate=10), "--gpus, --calibrate go with --plan"),
    ({}, dict(out=OutputSpec("")), "the following arguments are required: --output"),
])
def test_score_options_refuse_what_the_command_line_refuses(engine, kw, message):
    with pytest.raises(UsageError) as e:
        score(engine, **kw)
    assert message in str(e.value)


def test_score_options_from_code_and_from_the_command_line_are_the_same():
    args = score_parser().parse_args(["--input", "/in", "--output", "/out", "--model", "/m",
                                      "--engine-args", '{"seed": 1}', "--max-num-seqs", "64"])
    got = ScoreOptions.from_args(args)
    assert got == score(dict(backend="auto", engine_args={"seed": 1}, max_num_seqs=64))
    assert got.engine.max_model_len == EngineSpec("m").max_model_len and got.plan_fraction == 1.0
    assert score(plan=True, out=OutputSpec("")).plan_fraction == 1.0


def test_every_engine_flag_is_a_field_of_the_engine_spec():
    from dataclasses import fields

    assert set(ENGINE_FLAGS) <= {f.name for f in fields(EngineSpec)}
    flags = {a.dest for a in score_parser()._actions}
    assert set(ENGINE_FLAGS) <= flags

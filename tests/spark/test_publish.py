"""Publishing: a run's staged output replaces the previous one without a moment of loss.

The first tests build each state a publish can be cut short in, on real directories, and check
that the next run's recovery rolls it forward. The last ones kill real jobs (SIGKILL to the whole
process group of spark-submit) at points of their write and publish, check that the output is
the old or the new one, complete, and that the same command then succeeds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from promptscore.io import publish
from promptscore.io.publish import Publisher, work_dir


def make_output(d: Path, run: str, rows: list[str], success: bool = True) -> Path:
    """A directory that looks like a finished run's output."""
    d.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        (d / f"part-{i:05d}-{run}.txt").write_text(row)
    (d / "_rejects").mkdir(exist_ok=True)
    (d / "_rejects" / f"part-{run}.txt").write_text(f"rejects of {run}")
    (d / "_report.json").write_text(json.dumps({"job": "convert", "run_id": run}))
    if success:
        (d / "_SUCCESS").write_text("")
    return d


def _recover(spark, target: Path, keep=None) -> list[str]:
    """What the next run does first: take the lock, recover; here it then gives the lock back."""
    pub = Publisher(spark, f"file:{target}")
    pub.hold("convert")
    try:
        return pub.recover(keep)
    finally:
        pub.release()


def content(d: Path) -> dict[str, str]:
    return {p.relative_to(d).as_posix(): p.read_text() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.name.endswith(".crc")}


@pytest.fixture()
def conf_strategy(spark):
    def set_(value: str | None):
        if value:
            spark.conf.set("spark.promptscore.publish", value)
        else:
            spark.conf.unset("spark.promptscore.publish")
    yield set_
    spark.conf.unset("spark.promptscore.publish")


@pytest.mark.parametrize("strategy", ["exchange", "rename", "copy"])
def test_publish_replaces_the_old_output_and_leaves_nothing_behind(spark, tmp_path, conf_strategy, strategy):
    conf_strategy(strategy)
    target = tmp_path / "out"
    make_output(target, "old", ["a", "b", "c"])
    pub = Publisher(spark, f"file:{target}")
    assert pub.strategy == strategy
    pub.hold("convert")
    pub.prepare_staging()
    new = make_output(Path(pub.staging.removeprefix("file:")), pub.run_id, ["x"])
    expected = content(new)
    pub.publish()
    assert content(target) == expected
    assert not Path(work_dir(str(target))).exists()


def test_default_strategy_by_file_system(spark):
    assert Publisher(spark, "file:/tmp/x").strategy == "exchange"
    assert Publisher(spark, "hdfs://nn:8020/x").strategy == "rename"
    assert Publisher(spark, "oss://bucket/x").strategy == "copy"


def _cut_short(spark, tmp_path: Path, strategy: str, point: str) -> tuple[Path, dict, dict]:
    """A publish of a new output over an old one, stopped at ``point`` as a kill would stop it."""
    target = tmp_path / "out"
    old = content(make_output(target, "old", ["a", "b", "c"]))
    pub = Publisher(spark, f"file:{target}", strategy=strategy)
    pub.hold("convert")
    pub.prepare_staging()
    new = content(make_output(Path(pub.staging.removeprefix("file:")), pub.run_id, ["x", "y"]))
    os.environ["PROMPTSCORE_TEST_FAIL_AT"] = point
    try:
        with pytest.raises(RuntimeError, match="failure injected"):
            pub.publish()
    finally:
        del os.environ["PROMPTSCORE_TEST_FAIL_AT"]
        pub.lock.release()  # the run ends here, as a killed one would (its lease aside)
    return target, old, new


@pytest.mark.parametrize("strategy, point", [
    ("exchange", "publish-journaled"), ("exchange", "published"),
    ("rename", "publish-journaled"), ("rename", "publish-swapping"), ("rename", "published"),
    ("copy", "publish-journaled"), ("copy", "publish-swapping"), ("copy", "publish-moving"),
    ("copy", "published"),
])
def test_next_run_rolls_a_cut_short_publish_forward(spark, tmp_path, strategy, point):
    target, old, new = _cut_short(spark, tmp_path, strategy, point)
    now = content(target) if target.exists() else {}
    if strategy == "exchange":
        assert now in (old, new)  # one atomic step: never anything else
    if now not in (old, new):
        assert "_SUCCESS" not in now  # readers waiting for _SUCCESS never see a mix
    notes = _recover(spark, target)
    assert content(target) == new
    assert not Path(work_dir(str(target))).exists()
    if point != "published":  # after that point only an empty work directory is left
        assert notes and "completed the publish" in notes[0]


def test_leftovers_of_a_run_killed_before_publishing_are_removed(spark, tmp_path):
    target = tmp_path / "out"
    old = content(make_output(target, "old", ["a"]))
    pub = Publisher(spark, f"file:{target}")
    pub.prepare_staging()
    (Path(pub.staging.removeprefix("file:")) / "_temporary" / "0").mkdir(parents=True)
    (Path(pub.staging.removeprefix("file:")) / "_temporary" / "0" / "part-0").write_text("half")
    notes = _recover(spark, target)
    assert content(target) == old
    assert not Path(work_dir(str(target))).exists()
    assert "leftover" in notes[0]


def test_a_journal_cut_short_while_written_means_the_publish_never_began(spark, tmp_path):
    target = tmp_path / "out"
    old = content(make_output(target, "old", ["a"]))
    pub = Publisher(spark, f"file:{target}")
    pub.prepare_staging()
    make_output(Path(pub.staging.removeprefix("file:")), pub.run_id, ["x"])
    Path(work_dir(str(target)), publish.JOURNAL).write_text('{"run": "2026')
    _recover(spark, target)
    assert content(target) == old


def test_recovery_keeps_what_its_hook_names_and_an_adopted_staging_outlives_a_failed_run(spark, tmp_path):
    target = tmp_path / "out"
    work = Path(work_dir(str(target)))
    (work / "pieces-a" / "parts").mkdir(parents=True)
    (work / "pieces-a" / "parts" / "p.parquet").write_text("scores")
    (work / "pieces-b").mkdir()
    (work / "staging-old").mkdir()
    notes = _recover(spark, target, keep=lambda name: name == "pieces-a")
    assert sorted(p.name for p in work.iterdir()) == ["pieces-a"]
    assert "kept pieces-a to resume" in notes

    pub = Publisher(spark, f"file:{target}")
    pub.prepare_staging()
    pub.adopt_staging(f"file:{work}/pieces-a/parts")
    pub.discard()  # a failed run leaves its pieces for the next one
    assert (work / "pieces-a" / "parts" / "p.parquet").exists()
    (work / "pieces-a" / "parts" / "_report.json").write_text(json.dumps({"job": "score", "run_id": pub.run_id}))
    pub.hold("score")
    pub.publish()
    assert content(target) == {"p.parquet": "scores", "_report.json": json.dumps({"job": "score",
                                                                               "run_id": pub.run_id})}
    assert not work.exists()

    # A publish that had to be completed consumed the pieces: nothing is kept after one.
    target, old, new = _cut_short(spark, tmp_path / "again", "rename", "publish-journaled")
    (Path(work_dir(str(target))) / "pieces-a").mkdir()
    _recover(spark, target, keep=lambda name: name == "pieces-a")
    assert content(target) == new and not Path(work_dir(str(target))).exists()


@pytest.mark.parametrize("files, kind", [
    ({}, "absent"), ({"_temporary/0/x": ""}, "empty"), ({"data.csv": "1,2"}, "foreign"),
    ({"_report.json": '{"job": "convert"}', "_SUCCESS": "", "p.parquet": ""}, "complete"),
    ({"_report.json": '{"job": "score"}', "p.parquet": ""}, "unfinished"),
    ({"_report.json": '{"something": "else"}', "p.parquet": ""}, "foreign"),
])
def test_target_states(spark, tmp_path, files, kind):
    target = tmp_path / "out"
    for rel, text in files.items():
        (target / rel).parent.mkdir(parents=True, exist_ok=True)
        (target / rel).write_text(text)
    assert Publisher(spark, f"file:{target}").state().kind == kind


# ---------------------------------------------------------------------------------------------
# Real jobs, killed


def _rows(out: Path) -> list[str] | None:
    if not (out / "_SUCCESS").exists():
        return None
    return sorted(ds.dataset(str(out), format="parquet", ignore_prefixes=["_", "."]).to_table()
                  .column("prompt").to_pylist())


def _staging_writes(out: Path):
    work = Path(work_dir(str(out)))
    return lambda: any(p.name.startswith("part-") for p in work.glob("staging-*/_temporary/**/*"))


# The score job killed mid-run, and resumed: tests/spark/test_resume.py and tests/e2e/test_resume_killed.py.

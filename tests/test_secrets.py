"""No job takes an AccessKey as an argument, and none writes one to an output, report or log."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conftest import records, write_lines
from promptscore.submit import conf_args
from test_spark_submit import spark_submit

FAKE = {
    "OSS_ACCESS_KEY_ID": "LTAI5tFAKEkeyIDforTESTS01",
    "OSS_ACCESS_KEY_SECRET": "FAKEsecretVALUEforTESTSonly0123456789",
    "OSS_SESSION_TOKEN": "FAKEstsTOKENforTESTS.abcdefghijklmnop",
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI5tFAKEkeyIDforTESTS02",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "FAKEsecretTWOforTESTSonly9876543210",
}


@pytest.mark.parametrize("job", ["convert", "score", "submit", "stage_model"])
def test_no_flag_takes_a_credential(job):
    if job in ("convert", "score"):
        import importlib

        parser = importlib.import_module(f"promptscore.{job}").build_parser()
        flags = [opt for action in parser._actions for opt in action.option_strings]
    else:
        text = (Path(__file__).parents[1] / "promptscore" / f"{job}.py").read_text()
        flags = re.findall(r'add_argument\(\s*"(--[\w-]+)"', text)
    assert flags
    credential = r"access.?key|key.?id|secret|password|credential|(session|security|sts).?token|^--(ak|sk)$"
    assert not [f for f in flags if re.search(credential, f, re.I)]


def test_fake_keys_in_the_environment_end_up_nowhere(tmp_path, tiny_model):
    env_extra = dict(FAKE)
    events = tmp_path / "events"
    events.mkdir()
    write_lines(tmp_path / "jsonl" / "a.jsonl", [*records("hello", "world", "three"), "not json"])
    conf = [*conf_args("conf/local.conf"), "--conf", "spark.ui.showConsoleProgress=false",
            "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}",
            "--conf", "spark.driver.memory=1g"]
    runs = [
        spark_submit([*conf, "jobs/convert.py", "--input", tmp_path / "jsonl", "--output", tmp_path / "pq",
                      "--max-bad-fraction", "0.5", "--report", tmp_path / "convert-report.json"], env_extra=env_extra),
        spark_submit([*conf, "jobs/score.py", "--input", tmp_path / "pq", "--output", tmp_path / "scored",
                      "--model", tiny_model, "--backend", "transformers", "--report", tmp_path / "score-report.json"],
                     env_extra=env_extra),
        spark_submit([*conf, "jobs/score.py", "--input", tmp_path / "nowhere", "--output", tmp_path / "x",
                      "--model", tiny_model], env_extra=env_extra),  # an error path too
    ]
    assert [r.returncode for r in runs] == [0, 0, 2], runs[-1].stderr[-2000:]
    texts = {f"run {i} {name}": getattr(r, name) for i, r in enumerate(runs) for name in ("stdout", "stderr")}
    runtime = Path(os.environ["PROMPTSCORE_RUNTIME_DIR"])
    files = [p for root in (tmp_path, runtime) for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "_report.json" for p in files) and any(events.iterdir())
    for p in files:
        texts[str(p)] = p.read_bytes().decode("latin-1")
    for where, text in texts.items():
        for name, value in FAKE.items():
            assert value not in text, f"{name} found in {where}"

"""No job takes an AccessKey as an argument, and none writes one it reads from the environment to
an output, report, marker, cache or log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from promptscore.tools.submit import conf_args
from standins import OssStandIn
from test_spark_submit import spark_submit
from udfs.staging import MARKER

FAKE = {
    "OSS_ACCESS_KEY_ID": "LTAI5tFAKEkeyIDforTESTS01",
    "OSS_ACCESS_KEY_SECRET": "FAKEsecretVALUEforTESTSonly0123456789",
    "OSS_SESSION_TOKEN": "FAKEstsTOKENforTESTS.abcdefghijklmnop",
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI5tFAKEkeyIDforTESTS02",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "FAKEsecretTWOforTESTSonly9876543210",
    "ALIBABA_CLOUD_SECURITY_TOKEN": "FAKEstsTOKENtwoFORtests.qrstuvwxyz",
}


@pytest.mark.parametrize("job", ["convert", "score", "submit", "stage_model"])
def test_no_flag_takes_a_credential(job):
    if job in ("convert", "score"):
        from promptscore.convert.options import convert_parser
        from promptscore.score.options import score_parser

        parser = convert_parser() if job == "convert" else score_parser()
        flags = [opt for action in parser._actions for opt in action.option_strings]
    else:
        text = (Path(__file__).parents[1] / "promptscore" / "tools" / f"{job}.py").read_text()
        flags = re.findall(r'add_argument\(\s*"(--[\w-]+)"', text)
    assert flags
    credential = r"access.?key|key.?id|secret|password|credential|(session|security|sts).?token|^--(ak|sk)$"
    assert not [f for f in flags if re.search(credential, f, re.I)]


def stage_from_oss(source: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The bootstrap action that stages a model (bootstrap/stage-model.sh), run with ``env``."""
    return subprocess.run([ROOT / "bootstrap" / "stage-model.sh", source, dest, "--python", sys.executable],
                          env=env, capture_output=True, text=True, timeout=120)


def test_fake_keys_in_the_environment_end_up_nowhere(tmp_path, tiny_model):
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OSS_", "ALIBABA_CLOUD_"))}
    with OssStandIn(tiny_model.parent) as oss:
        # The keys are read: the bootstrap action stages the model from OSS with them ...
        staged = stage_from_oss(f"oss://bucket/{tiny_model.name}/", tmp_path / "model",
                                {**base, **FAKE, "OSS_ENDPOINT": oss.url})
        # ... and with the ALIBABA_CLOUD_* names when the OSS_* ones are not set.
        alibaba = {k: v for k, v in FAKE.items() if k.startswith("ALIBABA_CLOUD_")}
        staged_again = stage_from_oss(f"oss://bucket/{tiny_model.name}/", tmp_path / "model-2",
                                      {**base, **alibaba, "OSS_ENDPOINT": oss.url})
    assert staged.returncode == 0 and staged_again.returncode == 0, staged.stderr + staged_again.stderr
    signed_by = {r["headers"]["authorization"].split(":")[0] for r in oss.requests}
    assert signed_by == {f"OSS {FAKE['OSS_ACCESS_KEY_ID']}", f"OSS {FAKE['ALIBABA_CLOUD_ACCESS_KEY_ID']}"}
    assert {r["headers"]["x-oss-security-token"] for r in oss.requests} == \
        {FAKE["OSS_SESSION_TOKEN"], FAKE["ALIBABA_CLOUD_SECURITY_TOKEN"]}

    env_extra = dict(FAKE)
    events = tmp_path / "events"
    events.mkdir()
    (tmp_path / "pq").mkdir()  # the convert job's run with these keys is in test_fake_oss
    pq.write_table(pa.table({"prompt": ["hello", "world", "three"]}), tmp_path / "pq" / "part-0.parquet")
    conf = [*conf_args("conf/local.conf"), "--conf", "spark.ui.showConsoleProgress=false",
            "--conf", "spark.eventLog.enabled=true", "--conf", f"spark.eventLog.dir={events}",
            "--conf", "spark.driver.memory=1g"]
    runs = [
        # The staged model, as a URI: copied again into the workers' model cache.
        spark_submit([*conf, "jobs/score.py", "--input", tmp_path / "pq", "--output", tmp_path / "scored",
                      "--model", f"file://{tmp_path / 'model'}", "--cache-dir", tmp_path / "cache",
                      "--backend", "transformers", "--report", tmp_path / "score-report.json"], env_extra=env_extra),
        spark_submit([*conf, "jobs/score.py", "--input", tmp_path / "nowhere", "--output", tmp_path / "x",
                      "--model", tiny_model], env_extra=env_extra),  # an error path too
    ]
    assert [r.returncode for r in runs] == [0, 2], runs[-1].stderr[-2000:]
    texts = {f"run {i} {name}": getattr(r, name) for i, r in enumerate([staged, staged_again, *runs])
             for name in ("stdout", "stderr")}
    runtime = Path(os.environ["PROMPTSCORE_RUNTIME_DIR"])
    files = [p for root in (tmp_path, runtime) for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"_report.json", MARKER} <= names and any(events.iterdir())
    assert len([p for p in files if p.name == MARKER and p.parent.parent.name == "cache"]) == 1  # the cached copy
    for p in files:
        texts[str(p)] = p.read_bytes().decode("latin-1")
    for where, text in texts.items():
        for name, value in FAKE.items():
            assert value not in text, f"{name} found in {where}"

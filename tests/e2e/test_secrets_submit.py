"""Fake keys in the environment of a spark-submit run and of model staging end up in no output,
log or report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT
from standins import OssStandIn

from udfs.staging import MARKER

FAKE = {
    "OSS_ACCESS_KEY_ID": "LTAI5tFAKEkeyIDforTESTS01",
    "OSS_ACCESS_KEY_SECRET": "FAKEsecretVALUEforTESTSonly0123456789",
    "OSS_SESSION_TOKEN": "FAKEstsTOKENforTESTS.abcdefghijklmnop",
    "ALIBABA_CLOUD_ACCESS_KEY_ID": "LTAI5tFAKEkeyIDforTESTS02",
    "ALIBABA_CLOUD_ACCESS_KEY_SECRET": "FAKEsecretTWOforTESTSonly9876543210",
    "ALIBABA_CLOUD_SECURITY_TOKEN": "FAKEstsTOKENtwoFORtests.qrstuvwxyz",
}


def stage_from_oss(source: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The bootstrap action that stages a model (bootstrap/stage-model.sh), run with ``env``."""
    return subprocess.run([ROOT / "bootstrap" / "stage-model.sh", source, dest, "--python", sys.executable],
                          env=env, capture_output=True, text=True, timeout=120)


def test_fake_keys_in_the_environment_end_up_nowhere(spark, tmp_path, tiny_model, gpu_score_submit, monkeypatch,
                                                    capsys):
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

    # The score job by spark-submit with these keys in its environment (the run of test_spark_submit,
    # the model as a URI: copied again into the workers' model cache, an event log); the convert
    # job's run with these keys is in test_fake_oss.
    run, home = gpu_score_submit
    assert run.returncode == 0, run.stderr[-2000:]
    # An error path too, on the shared session with the keys in its environment.
    from conftest import run_job

    for name, value in FAKE.items():
        monkeypatch.setenv(name, value)
    code, err_out, err_err = run_job("score", ["--input", tmp_path / "nowhere", "--output", tmp_path / "x",
                                               "--model", tiny_model], capsys)
    assert code == 2, err_err[-2000:]
    runs = [run, subprocess.CompletedProcess([], code, err_out, err_err)]
    events = home / "events"
    texts = {f"run {i} {name}": getattr(r, name) for i, r in enumerate([staged, staged_again, *runs])
             for name in ("stdout", "stderr")}
    runtime = Path(os.environ["PROMPTSCORE_RUNTIME_DIR"])
    files = [p for root in (tmp_path, home, runtime) for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"_report.json", MARKER} <= names and any(events.iterdir())
    assert len([p for p in files if p.name == MARKER and p.parent.parent.name == "cache"]) == 1  # the cached copy
    for p in files:
        texts[str(p)] = p.read_bytes().decode("latin-1")
    for where, text in texts.items():
        for name, value in FAKE.items():
            assert value not in text, f"{name} found in {where}"

"""Shared fixtures: one local SparkSession for the whole run, and helpers that write real files."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import fake_oss

ROOT = Path(__file__).resolve().parents[1]

# Engine hosts of this test run keep their sockets, locks and logs here (inherited by Spark's
# JVM and its Python workers, which start after this line).
os.environ.setdefault("PROMPTSCORE_RUNTIME_DIR", tempfile.mkdtemp(prefix="promptscore-test-run-"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def fake_oss_store(tmp_path_factory) -> fake_oss.Store:
    """The ``oss://`` of the tests (``tests/fake_oss.py``), built before the session starts."""
    return fake_oss.Store(fake_oss.build_jar(), tmp_path_factory.mktemp("oss"))


@pytest.fixture
def oss_bucket(fake_oss_store) -> fake_oss.Bucket:
    """A new, empty bucket of the fake ``oss://``: ``.uri``, ``/ "key"`` and ``.local``."""
    if fake_oss_store.jar is None:
        pytest.skip("no javac to build the fake oss:// filesystem (install a JDK, e.g. openjdk-17-jdk-headless)")
    return fake_oss_store.bucket()


@pytest.fixture(scope="session")
def readahead_jar() -> Path | None:
    """The convert job's read-ahead reader (``promptscore/java``), built as ``make`` builds it;
    None without ``javac`` (the job then reads with Spark's text source)."""
    from promptscore.convert import reader

    return reader.build() if reader.javac() else None


@pytest.fixture(scope="session")
def spark(fake_oss_store, readahead_jar):
    """A local[2] SparkSession shared by every test (the jobs reuse it through getActiveSession);
    ``oss://`` paths go to ``fake_oss_store``; the read-ahead reader is on its class path."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    conf = fake_oss_store.spark_conf()
    if readahead_jar:
        conf["spark.jars"] = ",".join(filter(None, [conf.get("spark.jars"), str(readahead_jar)]))
    for key, value in conf.items():
        builder = builder.config(key, value)
    session = (
        builder.master("local[2]")
        .appName("promptscore-tests")
        .config("spark.log.level", "WARN")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        # No progress lines unless a test asks for them; live metrics every second when it does.
        .config("spark.promptscore.progress.interval", "0")
        .config("spark.executor.heartbeatInterval", "1s")
        .getOrCreate()
    )
    yield session
    from udfs import engine_host

    engine_host.stop_all()
    session.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny random-weight reward model (``python -m promptscore.tools.tiny_model``), built once."""
    from promptscore.tools.tiny_model import build

    return build(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def oov_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model with one more tokenizer token than the model has embeddings: rows holding
    ``<|oov|>`` are refused by the engine, as a mismatched tokenizer would make them."""
    import shutil

    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("models") / "oov"
    shutil.copytree(tiny_model, out, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(out)
    tok.add_tokens(["<|oov|>"], special_tokens=True)
    tok.save_pretrained(out)
    return out


def chat_text(prompt: str, response: str | None = None) -> str:
    """What the tiny model's chat template renders for [user: prompt(, assistant: response)]."""
    text = f"<|im_start|>user\n{prompt}<|im_end|>\n"
    return text if response is None else text + f"<|im_start|>assistant\n{response}<|im_end|>\n"


def direct_scores(model_dir: Path, texts: list[str]) -> list[float]:
    """The reference: transformers' own forward pass, one unpadded row at a time, in fp32."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.inference_mode():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            out.append(float(model(input_ids=ids).logits[0, 0]))
    return out


def write_lines(path: Path, lines: list[str], newline: str = "\n", gz: bool = False) -> Path:
    """Write ``lines`` joined by ``newline`` (and a final one) to ``path``, gzipped if asked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (newline.join(lines) + (newline if lines else "")).encode("utf-8")
    if gz:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def records(*prompts: str, **extra) -> list[str]:
    """JSON lines ``{"prompt": p, **extra}`` for each prompt."""
    return [json.dumps({"prompt": p, **extra}, ensure_ascii=False) for p in prompts]


def load_job(name: str):
    """The entry module ``jobs/<name>.py``, imported from its file (as spark-submit runs it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_job(name: str, argv: list[str], capsys) -> tuple[int, str, str]:
    """Run ``jobs/<name>.py`` in this process (on the shared session); return code, stdout, stderr."""
    code = load_job(name).main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def submit(args: list, env_extra: dict, pause: str | None, flag: Path) -> subprocess.Popen:
    """``spark-submit --master local[2] ARGS`` in a process group of its own (to kill it whole), with
    ``PROMPTSCORE_TEST_PAUSE_AT=pause`` (the job writes ``flag`` and waits there) unless None."""
    import pyspark

    env = dict(os.environ, **env_extra)
    env.pop("PROMPTSCORE_TEST_PAUSE_AT", None)
    if pause:
        env["PROMPTSCORE_TEST_PAUSE_AT"] = pause
        env["PROMPTSCORE_TEST_PAUSE_FILE"] = str(flag)
    env["SPARK_HOME"] = os.path.dirname(pyspark.__file__)
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = sys.executable
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", "local[2]",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.ui.showConsoleProgress=false",
           "--conf", "spark.driver.memory=1g", *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def kill_when(proc: subprocess.Popen, ready, timeout: float = 240) -> None:
    """SIGKILL the process group of ``proc`` as soon as ``ready()`` is true."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the job ended before the kill point (exit {proc.returncode}):\n{err[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("the kill point was never reached")
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU and vLLM (skipped elsewhere)")
    config.addinivalue_line("markers", "slow: takes minutes (real executor processes); -m 'not slow' skips it")
    config.addinivalue_line("filterwarnings", "ignore:distutils Version classes are deprecated:DeprecationWarning")


def has_gpu_and_vllm() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()

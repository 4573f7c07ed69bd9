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

import fake_oss
import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
# The tiers: unit (no SparkSession, no JVM), spark (the shared session, jobs in this process) and
# e2e (spark-submit, local-cluster, other JVMs, wheel builds: all slow). A tier's tests may import
# another tier's helpers and fixtures by module name.
TIERS = ("unit", "spark", "e2e")
sys.path[1:1] = [str(TESTS / tier) for tier in TIERS if str(TESTS / tier) not in sys.path]

# Engine hosts of this test run keep their sockets, locks and logs here (inherited by Spark's
# JVM and its Python workers, which start after this line); each pytest-xdist worker in a folder
# of its own (hosts are keyed by their owner's pid, and a worker's own are children of one process).
os.environ.setdefault("PROMPTSCORE_RUNTIME_DIR", tempfile.mkdtemp(prefix="promptscore-test-run-"))
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("PROMPTSCORE_TEST_WORKER_DIR"):
    os.environ["PROMPTSCORE_RUNTIME_DIR"] = os.environ["PROMPTSCORE_TEST_WORKER_DIR"] = os.path.join(
        os.environ["PROMPTSCORE_RUNTIME_DIR"], os.environ["PYTEST_XDIST_WORKER"])
    os.makedirs(os.environ["PROMPTSCORE_RUNTIME_DIR"], mode=0o700, exist_ok=True)
# Where pytest-xdist workers leave the groups of the tests they collected, for the scheduler.
os.environ.setdefault("PROMPTSCORE_TEST_GROUPS", os.path.join(os.environ["PROMPTSCORE_RUNTIME_DIR"], "groups.json"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Two test workers on two cores: one torch thread in each process (this one, its engine hosts),
# or OpenMP's spinning threads fight the other worker's (a 4,000-row scoring test: 19 s against 5 s).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tests' JVMs (this session's, spark-submit's and local-cluster executors') run short jobs on
# little data: the C1 compiler alone and a serial collector spend far less CPU on them than the
# server defaults, and so does loading Spark's own classes (and those Spark generates) without
# verifying their bytecode again (a tenth of the JVMs' CPU in `make test-fast`). Through the
# launcher's SPARK_SUBMIT_OPTS, so that every spark-submit inherits it.
TEST_JVM_OPTS = ("-XX:TieredStopAtLevel=1 -XX:+UseSerialGC "
                 "-XX:+UnlockDiagnosticVMOptions -XX:-BytecodeVerificationRemote")
os.environ.setdefault("SPARK_SUBMIT_OPTS", f"{TEST_JVM_OPTS} '-Dspark.executor.extraJavaOptions={TEST_JVM_OPTS}'")


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
def lookup_cache_jar() -> Path | None:
    """``tests/jvm/ClassLookupCache.java`` compiled (once per source and pyspark version, as the
    fake ``oss://`` is); None without ``javac``, and the session then looks classes up as py4j does."""
    return fake_oss.cached_jar(TESTS / "jvm" / "ClassLookupCache.java",
                               Path(tempfile.gettempdir()) / "promptscore-test-jvm", "lookup-cache")


@pytest.fixture(scope="session")
def spark(fake_oss_store, readahead_jar, lookup_cache_jar):
    """A local[2] SparkSession shared by every test (the jobs reuse it through getActiveSession);
    ``oss://`` paths go to ``fake_oss_store``; the read-ahead reader is on its class path; py4j's
    failed class lookups are remembered (``lookup_cache_jar``)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    conf = fake_oss_store.spark_conf()
    for jar in (readahead_jar, lookup_cache_jar):
        if jar:
            conf["spark.jars"] = ",".join(filter(None, [conf.get("spark.jars"), str(jar)]))
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
        # As conf/local.conf and conf/emr-score-gpu.conf: workers fork from the score job's daemon.
        .config("spark.python.daemon.module", "udfs.worker_daemon")
        .getOrCreate()
    )
    if lookup_cache_jar:  # py4j's lookups of names that are not classes, answered once (see the Java)
        from promptscore import sparkapi

        sparkapi.jvm(session).promptscore.testjvm.ClassLookupCache.install()
    yield session
    from udfs import engine_client

    engine_client.stop_all()
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
    config.addinivalue_line("markers", "slow: tests/e2e: launches spark-submit, a local-cluster or another JVM, or "
                            "builds the wheel and virtualenvs; make test-fast leaves it out")
    config.addinivalue_line("markers", "xdist_group(name): tests that pytest-xdist runs in one worker (set by "
                            "group_and_order)")
    config.addinivalue_line("filterwarnings", "ignore:distutils Version classes are deprecated:DeprecationWarning")


# A test that launches spark-submit or builds the wheel belongs in tests/e2e, which is all slow and
# so left out of `make test-fast`; one elsewhere that uses these fixtures is refused.
SLOW_FIXTURES = {"soak_submit", "make_submit_convert", "gpu_score_submit", "package_dist", "offline_wheels"}
# Session fixtures that cost more than a test: with pytest-xdist (`make test`), each worker would
# make its own, so the tests that use one run in the same worker (below).
SHARED_FIXTURES = SLOW_FIXTURES | {"resume_baseline"}
# Seconds each test file took in a full run (setup included), two workers on two busy cores: only
# their ratios matter. A file missing here counts as 0; refresh it when a file's cost changes a lot.
DURATIONS = TESTS / "durations.json"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.parent.name == "e2e":
            item.add_marker(pytest.mark.slow)
        elif SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) or item.get_closest_marker("slow"):
            raise pytest.UsageError(f"{item.nodeid} is slow: it belongs in tests/e2e")
    group_and_order(items)


def group_and_order(items: list[pytest.Item]) -> None:
    """Give each test the ``xdist_group`` of its file, joined with every file whose tests share a
    fixture of SHARED_FIXTURES (``--dist loadgroup`` runs a group in one worker: module fixtures
    and shared launches are made once); then order the groups longest first by DURATIONS, the
    rest e2e first, unit last (xdist hands them out in this order: the long ones start first, the
    short ones fill in at the end). A group's tests keep their order and stay together."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            x = parent[x]
        return x

    def file_of(path: Path) -> str:  # tests/spark/test_x.py: files of one name in two tiers stay apart
        return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)

    for item in items:
        for name in SHARED_FIXTURES & set(getattr(item, "fixturenames", ())):
            a, b = find(file_of(item.path)), find(f"fixture:{name}")
            parent[max(a, b)] = min(a, b)  # "fixture:..." sorts first; files of one group: the first
    rank = {"e2e": 0, "spark": 1, "unit": 2}
    tier: dict[str, int] = {}
    for item in items:
        group = find(file_of(item.path))
        tier[group] = min(tier.get(group, 3), rank.get(item.path.parent.name, 3))
    first = {}
    for i, item in enumerate(items):
        group = find(file_of(item.path))
        first.setdefault(group, i)
        item.add_marker(pytest.mark.xdist_group(group.removeprefix("fixture:").removesuffix(".py")))
    seconds = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    weight: dict[str, float] = {}
    for path in {item.path for item in items}:
        group = find(file_of(path))
        weight[group] = weight.get(group, 0) + seconds.get(file_of(path), 0)
    group_of = [find(file_of(item.path)) for item in items]
    order = sorted(range(len(items)), key=lambda i: (-weight[group_of[i]], tier[group_of[i]], first[group_of[i]], i))
    items[:] = [items[i] for i in order]
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker collects the same tests
        groups = Path(os.environ["PROMPTSCORE_TEST_GROUPS"])
        partial = groups.with_name(f"{groups.name}.{os.environ['PYTEST_XDIST_WORKER']}")
        partial.write_text(json.dumps({item.nodeid: find(file_of(item.path)) for item in items}))
        partial.replace(groups)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup`` by the groups and in the order of ``group_and_order``. pytest-xdist
    3.8 reads a test's group from a suffix it adds to the test's id, which pytest 9.2 no longer
    takes: here the scheduler reads them from the file the workers wrote (pytest-xdist#1386)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    config.option.loadscopereorder = False  # hand the groups out in the order above, not by size
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # called once every worker has collected
                self.groups = json.loads(Path(os.environ["PROMPTSCORE_TEST_GROUPS"]).read_text())
            # A test id may carry the "@group" suffix that other pytest-xdist versions add; a test
            # not in the file (none should be) at least stays with the other tests of its file.
            base = nodeid.split("@", 1)[0]
            return self.groups.get(nodeid) or self.groups.get(base) or base.split("::", 1)[0]

    return GroupScheduling(config, log)


def has_gpu_and_vllm() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


# ---------------------------------------------------------------------------------------------
# Launches shared by several tests: each spark-submit below checks what more than one test asks.


@pytest.fixture(scope="session")
def soak_submit(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """``spark-submit tests/print_soak.py 5000`` with ``conf/local.conf`` as --conf pairs over a
    SPARK_CONF_DIR like a cluster's (its spark-defaults.conf sets ``spark.eventLog.dir`` to
    ``<home>/spark-events`` and the Parquet codec to snappy): the process, and ``home``.
    Read by test_print_err (lines and resources) and test_conf (the properties it ran with)."""
    from promptscore.tools.submit import conf_args

    home = tmp_path_factory.mktemp("soak")
    conf_dir = home / "spark-conf"
    conf_dir.mkdir()
    (conf_dir / "spark-defaults.conf").write_text(
        f"spark.eventLog.dir                   file:{home}/spark-events\n"
        "spark.sql.parquet.compression.codec  snappy\n")
    # What cannot hold on this machine: the nodes' Python, Maven downloads; a small driver.
    local = {"spark.pyspark.python": sys.executable, "spark.pyspark.driver.python": sys.executable,
             "spark.jars.packages": "", "spark.ui.enabled": "false", "spark.driver.memory": "1g"}
    proc = submit(["--master", "local[1]", *conf_args(ROOT / "conf" / "local.conf", local), "tests/print_soak.py",
                   "5000"], {"SPARK_CONF_DIR": str(conf_dir)}, None, home / "unused")
    stdout, stderr = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), home


@pytest.fixture(scope="session")
def make_submit_convert(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """``make submit JOB=convert PROFILE=conf/local.conf EXECUTE=1``: a real spark-submit without
    --jars (the job adds its read-ahead reader itself), over 4 files of 30 lines and a truncated
    .gz. The process, the input and the output. Read by test_package and test_readahead."""
    base = tmp_path_factory.mktemp("make-submit")
    src, out = base / "in", base / "out"
    for i in range(4):
        write_lines(src / f"f{i}.jsonl", records(*(f"p{i}-{j}" for j in range(30))))
    full = gzip.compress(("\n".join(records(*map(str, range(3000)))) + "\n").encode())
    (src / "truncated.jsonl.gz").write_bytes(full[: len(full) // 2])
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # the venv's spark-submit
    proc = subprocess.run(["make", "-s", "submit", "JOB=convert", "PROFILE=conf/local.conf", "EXECUTE=1",
                           f"ARGS=--input {src} --output {out} --max-bad-fraction 0.99"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    return proc, src, out


@pytest.fixture(scope="session")
def gpu_score_submit(tmp_path_factory, tiny_model) -> tuple[subprocess.CompletedProcess, Path]:
    """The score job by spark-submit on local-cluster[2,1,1024] (test_spark_submit: two executors
    with a GPU address each, a new Python worker for every task), the model given as a URI and
    copied into ``<home>/cache``, an event log in ``<home>/events``, and the fake keys of
    test_secrets in its environment. The process, and ``home`` (``in``, ``scored``)."""
    from test_secrets_submit import FAKE
    from test_spark_submit import launch_gpu_score

    home = tmp_path_factory.mktemp("gpu-score")
    return launch_gpu_score(home, f"file://{tiny_model}", FAKE), home


@pytest.fixture(scope="session")
def resume_input(spark, tmp_path_factory) -> Path:
    """240 prompts in 6 Parquet files (6 chunks on local[2]: 4 per slot, a file is never split), for
    the resume tests (spark/test_resume, e2e/test_resume_killed)."""
    path = tmp_path_factory.mktemp("resume-in") / "prompts"
    rows = [(i, f"prompt {i}: " + "words " * (i % 13 + 1)) for i in range(240)]
    spark.createDataFrame(rows, "id int, prompt string").repartition(6, "id").write.parquet(str(path))
    assert len(list(path.glob("*.parquet"))) == 6
    return path


@pytest.fixture(scope="session")
def resume_baseline(spark, resume_input, tiny_model, tmp_path_factory) -> tuple[Path, str]:
    """The score job over ``resume_input`` never stopped, on the shared session: its output, and
    what it printed on stderr (progress lines every second). The reference of the resumed runs."""
    import contextlib
    import io

    from promptscore import progress

    out = tmp_path_factory.mktemp("whole") / "scores"
    stdout, stderr = io.StringIO(), io.StringIO()
    spark.conf.set(progress.INTERVAL_CONF, "1")
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = load_job("score").main([str(a) for a in ("--input", resume_input, "--output", out,
                                                            "--model", tiny_model)])
    finally:
        spark.conf.set(progress.INTERVAL_CONF, "0")
    err = stderr.getvalue()
    assert code == 0, err
    return out, err


# ---------------------------------------------------------------------------------------------
# The package's wheel, built once per run, and an offline wheel directory (no network).


@pytest.fixture(scope="session")
def package_dist(tmp_path_factory) -> Path:
    """What `make package` builds (the wheel and the --py-files zip), built once per run into a
    directory of the run's own (the checkout's dist/ is left as it is)."""
    from udfs.locks import file_lock

    out = tmp_path_factory.mktemp("package") / "dist"
    # `make package` starts by removing the checkout's build/: one build at a time, whatever runs it.
    with file_lock(ROOT / ".venv" / "make-package.lock"):
        proc = subprocess.run(["make", "-s", "package", f"DIST={out}"], cwd=ROOT, capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def repack_installed(name: str, out: Path) -> Path:
    """A wheel of the distribution ``name`` as installed in this environment, rebuilt from its
    RECORD (what pip installed from the original wheel), written to ``out`` once."""
    import base64
    import hashlib
    import importlib.metadata as md
    import re
    import zipfile

    dist = md.distribution(name)
    info = Path(dist._path)  # the .dist-info directory
    tags = [line.split(":", 1)[1].strip() for line in (info / "WHEEL").read_text().splitlines()
            if line.startswith("Tag:")]
    parts = [".".join(sorted({t.split("-")[i] for t in tags})) for i in range(3)]
    wheel = out / f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}-{'-'.join(parts)}.whl"
    if wheel.exists():
        return wheel
    skip = {"INSTALLER", "REQUESTED", "direct_url.json", "RECORD"}
    record, tmp = [], wheel.with_suffix(".part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for entry in dist.files or []:
            rel = entry.as_posix()
            if rel.startswith("..") or "__pycache__" in rel or (rel.startswith(info.name + "/") and entry.name in skip):
                continue  # scripts are made again from the entry points; caches; the installer's own files
            data = Path(dist.locate_file(entry)).read_bytes()
            z.writestr(rel, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel},sha256={digest},{len(data)}")
        record.append(f"{info.name}/RECORD,,")
        z.writestr(f"{info.name}/RECORD", "\n".join(record) + "\n")
    tmp.rename(wheel)
    return wheel


@pytest.fixture(scope="session")
def offline_wheels(package_dist, tmp_path_factory) -> Path:
    """A wheel directory for ``promptscore[locked]`` without a package index: the package's wheel
    and, for every dependency, the version installed here, repacked (kept in .venv/test-wheels)."""
    import importlib.metadata as md
    import shutil

    from packaging.requirements import Requirement

    cache = ROOT / ".venv" / "test-wheels"
    cache.mkdir(parents=True, exist_ok=True)
    out = tmp_path_factory.mktemp("wheelhouse")
    wheel = next(package_dist.glob("promptscore-*.whl"))
    shutil.copy(wheel, out)
    todo, seen = [("promptscore", "locked")], set()
    while todo:
        name, extra = todo.pop()
        for text in md.distribution(name).requires or []:
            req = Requirement(text)
            if req.marker and not req.marker.evaluate({"extra": extra}):
                continue
            key = req.name.lower()
            if key not in seen:
                seen.add(key)
                todo.append((req.name, ""))
                shutil.copy(repack_installed(req.name, cache), out)
    return out

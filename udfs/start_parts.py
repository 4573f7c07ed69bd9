"""Where an engine's start goes, part by part, from the process's own clock and vLLM's log lines.

A ``StartClock`` is made first thing in the process that builds an engine (the engine host, or a
bare benchmark script). It measures time from the moment the kernel started this process, and
takes its own marks: ``main`` (Python running this process's code), ``torch`` and ``vllm``
(after importing them), ``ready`` (the engine built) and ``first`` (the first request answered).
vLLM's engine core runs in a child process, so the rest comes from vLLM's log lines: a thread
reads this process's standard output (when it is a file, as an engine host's log is) while the
engine starts, and notes when each line below first appears (``MARKS``, the exact text of vLLM
0.25.0) and the figure it states. The engine-core process's own start comes from the kernel
(``/proc/<pid>/stat``).

``parts`` turns the marks into the seconds of each part (``PART_KEYS``): consecutive intervals of
one timeline, so that they add up to the whole start (``unaccounted_s`` is what no mark covers).
A part whose marks are missing (another vLLM, a line not printed, a process that is not Linux)
is None; nothing here ever fails a start.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Any

# Log lines of vLLM 0.25.0 (name, pattern; a group ``v`` is the figure the line states), in the
# order the engine core prints them. Sources: v1/engine/core.py (EngineCore.__init__,
# _initialize_kv_caches), v1/worker/gpu_model_runner.py (load_model, capture_model),
# compilation/monitor.py, compilation/decorators.py, compilation/backends.py,
# v1/worker/gpu_worker.py (determine_available_memory), utils/system_utils.py (_maybe_force_spawn).
MARKS: tuple[tuple[str, str], ...] = (
    ("forced_spawn", r"We must use the `spawn` multiprocessing start method"),
    ("core_init", r"Initializing a V1 LLM engine \(v[^)]*\) with config"),
    ("load_start", r"Starting to load model "),
    ("weights_loaded", r"Loading weights took (?P<v>[\d.]+) seconds"),
    ("model_loaded", r"Model loading took [\d.]+ GiB memory and (?P<v>[\d.]+) seconds"),
    ("dynamo", r"Dynamo bytecode transform time: (?P<v>[\d.]+) s"),
    ("compile_hit", r"Directly load AOT compilation from path|Directly load the compiled graph\(s\) for compile range"),
    ("compile_miss", r"Compiling a graph for compile range|saved AOT compiled function to"),
    ("compiled", r"torch\.compile (?:and initial profiling/warmup run together )?took (?P<v>[\d.]+) s in total"),
    ("profiled", r"Initial profiling/warmup run took (?P<v>[\d.]+) s"),
    ("kv_memory", r"Available KV cache memory: "),
    ("graphs_skipped", r"Skipping CUDA graph capture"),
    ("graphs_captured", r"Graph capturing finished in (?P<v>[\d.]+) secs"),
    ("init_engine", r"init engine \(profile, create kv cache, warmup model\) took (?P<v>[\d.]+) s"),
)
_PATTERNS = [(name, re.compile(pattern)) for name, pattern in MARKS]

# Every start's parts have these keys (None where a part does not apply or was not seen).
PART_KEYS = (
    "python_s",  # the kernel starting the process, Python starting, this package's modules
    "torch_import_s",
    "vllm_import_s",
    "engine_config_s",  # vLLM's config, model inspection, tokenizer: until the engine core starts
    "core_spawn_s",  # the engine-core process until it runs (imports torch and vLLM again under spawn)
    "device_init_s",  # CUDA context, distributed setup
    "weights_s",  # the model built and its weights loaded (transformers: import, load, to device)
    "compile_s",  # torch.compile: Dynamo and Inductor, or loading their output from the cache
    "profile_s",  # the profile run (and CUDA graph memory profiling), until the KV cache is sized
    "kv_cache_warmup_s",  # KV cache allocation, warm-up runs
    "cuda_graphs_s",  # CUDA graph capture (0 when vLLM skipped it)
    "handshake_s",  # the engine core reporting ready, the front end finishing
    "first_request_s",  # one request of a few tokens
    "total_s",  # process start to the first request answered
    "unaccounted_s",  # total_s less every part above that was measured
)
_SLACK_S = 0.3  # a mark seen up to this late by the polling reader still orders correctly


def _stat(pid: int | str) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def started_ticks(pid: int | str = "self") -> int | None:
    """When process ``pid`` started, in clock ticks since boot (None off Linux or once it is gone)."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def seconds_since_start() -> float | None:
    """Seconds since the kernel started this process (None where /proc cannot say)."""
    ticks = started_ticks()
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None if ticks is None else max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))


def child_pids(pid: int | None = None) -> list[int]:
    """The live children of ``pid`` (this process by default)."""
    pid = pid or os.getpid()
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except (OSError, ValueError):
        return []
    return sorted(set(out))


def engine_core_pid(pid: int | None = None) -> int | None:
    """vLLM's engine-core process among the children of ``pid``: the one named ``EngineCore``,
    else the oldest child that is not multiprocessing's resource tracker."""
    children = []
    for child in child_pids(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"EngineCore" in cmdline:
            return child
        if b"resource_tracker" not in cmdline:
            children.append((started_ticks(child) or 0, child))
    return min(children)[1] if children else None


def stdout_file() -> str | None:
    """This process's standard output when it is a regular file (an engine host's log)."""
    try:
        path = os.readlink("/proc/self/fd/1")
        return path if os.path.isfile(path) else None
    except OSError:
        return None


class LogWatcher:
    """Reads a growing log file from its current end and notes, for each of ``MARKS``, when its
    line first appeared (seconds on ``clock``) and the figure it states."""

    def __init__(self, path: str, clock, poll_s: float = 0.05):
        self.path, self.clock, self.poll_s = path, clock, poll_s
        self.seen: dict[str, tuple[float, float | None]] = {}
        self._stop = threading.Event()
        try:
            self._offset = os.path.getsize(path)
        except OSError:
            self._offset = 0
        self._partial = ""
        self._thread = threading.Thread(target=self._run, name="promptscore-start-log", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.read()

    def read(self) -> None:
        """Take in what was written since the last read."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(1 << 22)
        except OSError:
            return
        if not data:
            return
        self._offset += len(data)
        now = self.clock.now()
        text = (self._partial + data.decode("utf-8", "replace")).replace("\r", "\n")
        lines = text.split("\n")
        self._partial = lines.pop()[-65536:]
        for line in lines:
            self.scan(line, now)

    def scan(self, line: str, at: float | None) -> None:
        """Note the marks ``line`` holds, seen at ``at``."""
        if at is None:
            return
        for name, pattern in _PATTERNS:
            if name not in self.seen:
                m = pattern.search(line)
                if m:
                    value = m.groupdict().get("v")
                    self.seen[name] = (at, float(value) if value else None)

    def stop(self) -> dict[str, tuple[float, float | None]]:
        """Stop reading (after a last read); the marks seen."""
        self._stop.set()
        self._thread.join(timeout=2)
        self.read()
        if self._partial:
            self.scan(self._partial, self.clock.now())
        return dict(self.seen)


class StartClock:
    """Seconds since this process started, the marks taken on them and (optionally) a reader of
    this process's log. Make it first thing in the process; ``mark`` as the start goes on;
    ``finish`` once the engine has answered its first request."""

    def __init__(self, watch_log: str | None = None):
        since = seconds_since_start()
        # The process's start on the monotonic clock (None: parts cannot be placed).
        self._zero = None if since is None else time.monotonic() - since
        self.marks: dict[str, float] = {}
        self.core_start: float | None = None
        self.watcher = LogWatcher(watch_log, self) if watch_log and self._zero is not None else None
        self.mark("main")

    @classmethod
    def for_this_process(cls) -> "StartClock":
        """A clock that reads this process's standard output when it is a log file."""
        return cls(stdout_file())

    def now(self) -> float | None:
        return None if self._zero is None else time.monotonic() - self._zero

    def mark(self, name: str) -> None:
        at = self.now()
        if at is not None and name not in self.marks:
            self.marks[name] = at

    def note_engine_core(self) -> None:
        """Note when vLLM's engine-core process (a child of this one, alive now) started."""
        core, me = engine_core_pid(), started_ticks()
        ticks = started_ticks(core) if core is not None else None
        if ticks is not None and me is not None:
            self.core_start = (ticks - me) / os.sysconf("SC_CLK_TCK")

    def finish(self) -> dict[str, Any]:
        """The parts of this start (``parts``), with what else it found: ``mp_method``,
        ``compile_cache_hit``, ``cuda_graphs`` and the figures vLLM's lines stated."""
        seen = self.watcher.stop() if self.watcher is not None else {}
        return parts(self.marks, seen, self.core_start)


def _span(t: dict[str, float | None], start: str, end: str) -> float | None:
    a, b = t.get(start), t.get(end)
    if a is None or b is None:
        return None
    d = b - a
    if d < 0:
        return 0.0 if d > -_SLACK_S else None
    return round(d, 3)


def _hit(seen: dict[str, tuple[float, float | None]]) -> bool | None:
    if "compile_miss" in seen:
        return False
    return True if "compile_hit" in seen else None


def parts(marks: dict[str, float], seen: dict[str, tuple[float, float | None]],
          core_start: float | None = None) -> dict[str, Any]:
    """The seconds of each part of a start (keys ``PART_KEYS``, None where unknown), from the
    process's own ``marks`` (``main``, ``torch``, ``vllm``, ``ready``, ``first``), the log marks
    ``seen`` (name -> (seconds, figure)) and the engine core's ``core_start`` (seconds)."""
    t: dict[str, float | None] = {**{k: at for k, (at, _) in seen.items()}, **marks, "zero": 0.0,
                                  "core_start": core_start}
    value = {k: v for k, (_, v) in seen.items()}
    graphs = value.get("graphs_captured") if "graphs_captured" in seen else (0.0 if "graphs_skipped" in seen else None)
    vllm = "vllm" in marks
    out: dict[str, Any] = {
        "python_s": _span(t, "zero", "main"),
        "torch_import_s": _span(t, "main", "torch"),
        "vllm_import_s": _span(t, "torch", "vllm") if vllm else None,
        "engine_config_s": _span(t, "vllm", "core_start"),
        "core_spawn_s": _span(t, "core_start", "core_init"),
        "device_init_s": _span(t, "core_init", "load_start"),
        "weights_s": _span(t, "load_start", "model_loaded") if vllm else _span(t, "torch", "ready"),
        "compile_s": _span(t, "model_loaded", "compiled"),
        "profile_s": _span(t, "compiled", "kv_memory"),
        "kv_cache_warmup_s": None,
        "cuda_graphs_s": graphs,
        "handshake_s": _span(t, "init_engine", "ready"),
        "first_request_s": _span(t, "ready", "first"),
        "total_s": _span(t, "zero", "first") if "first" in marks else _span(t, "zero", "ready"),
    }
    warm = _span(t, "kv_memory", "init_engine")
    if warm is not None:
        out["kv_cache_warmup_s"] = round(max(0.0, warm - (graphs or 0.0)), 3)
    known = [v for k, v in out.items() if k != "total_s" and v is not None]
    out["unaccounted_s"] = round(out["total_s"] - sum(known), 3) if out["total_s"] is not None else None
    # vLLM forks its engine core unless told to spawn it, or unless it must (it says so).
    method = "spawn" if "forced_spawn" in seen else os.environ.get("VLLM_WORKER_MULTIPROC_METHOD") or "fork"
    out["mp_method"] = method if vllm else None
    out["compile_cache_hit"] = _hit(seen)
    out["cuda_graphs"] = None if graphs is None else "graphs_captured" in seen
    out["vllm_says"] = {k: value[k] for k in ("weights_loaded", "model_loaded", "dynamo", "compiled", "profiled",
                                              "graphs_captured", "init_engine") if value.get(k) is not None}
    return out

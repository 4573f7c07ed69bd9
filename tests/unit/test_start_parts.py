"""Where an engine's start goes (``udfs.start_parts``): the parts from a process's own marks, its
engine-core child's start and vLLM 0.25.0's log lines; a line that is missing leaves its part
None and nothing fails."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from udfs.start_parts import MARKS, PART_KEYS, parts

# vLLM 0.25.0's lines, as its format strings render them (see MARKS for where each comes from),
# each after the pause (seconds) the stand-in engine core waits before printing it.
VLLM_LINES = [
    (0.5, "INFO 12-03 10:00:01 [core.py:114] Initializing a V1 LLM engine (v0.25.0) with config: model='m', "
          "speculative_config=None"),
    (0.3, "INFO 12-03 10:00:01 [gpu_model_runner.py:5210] Starting to load model m..."),
    (0.2, "INFO 12-03 10:00:02 [default_loader.py:431] Loading weights took 0.15 seconds"),
    (0.2, "INFO 12-03 10:00:02 [gpu_model_runner.py:5307] Model loading took 2.88 GiB memory and 0.412345 seconds"),
    (0.1, "INFO 12-03 10:00:02 [backends.py:1148] Dynamo bytecode transform time: 0.05 s"),
    (0.0, "INFO 12-03 10:00:02 [decorators.py:309] Directly load AOT compilation from path /c/rank_0_0/model"),
    (0.4, "INFO 12-03 10:00:03 [monitor.py:53] torch.compile took 0.48 s in total"),
    (0.3, "INFO 12-03 10:00:03 [monitor.py:82] Initial profiling/warmup run took 0.29 s"),
    (0.2, "INFO 12-03 10:00:03 [gpu_worker.py:539] Available KV cache memory: 120.5 GiB"),
    (0.3, "WARNING 12-03 10:00:04 [gpu_model_runner.py:6649] Skipping CUDA graph capture. To turn on CUDA graph "
          "capture, ensure `cudagraph_mode` was not manually set to `NONE`"),
    (0.2, "INFO 12-03 10:00:04 [core.py:338] init engine (profile, create kv cache, warmup model) took 1.02 s "
          "(compilation: 0.48 s)"),
]

# A process that starts as an engine host does: marks its imports, forks an engine core that
# prints vLLM's lines into the same log (its standard output), then marks ready and first.
SCRIPT = r"""
import json, multiprocessing, os, sys, time
from udfs.start_parts import StartClock

clock = StartClock.for_this_process()
lines = json.loads(sys.argv[2])

def core():
    for pause, line in lines:
        time.sleep(pause)
        print(line, flush=True)
    time.sleep(120)

time.sleep(0.2); clock.mark("torch")
time.sleep(0.2); clock.mark("vllm")
time.sleep(0.3)
os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "fork"
child = multiprocessing.get_context("fork").Process(target=core, daemon=True)
child.start()
time.sleep(sum(p for p, _ in lines) + 0.4)
clock.mark("ready")
clock.note_engine_core()
time.sleep(0.2); clock.mark("first")
result = clock.finish()
child.kill()
open(sys.argv[1], "w").write(json.dumps(result))
"""


def start(tmp_path: Path, lines: list) -> dict:
    out, log = tmp_path / "parts.json", tmp_path / "host.log"
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), json.dumps(lines)], stdout=f,
                              stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, log.read_text()
    return json.loads(out.read_text())


def close(got: float | None, want: float, slack: float = 0.3) -> bool:
    return got is not None and abs(got - want) <= slack


def test_a_start_is_told_in_parts_that_add_up(tmp_path):
    p = start(tmp_path, VLLM_LINES)
    assert set(PART_KEYS) <= set(p)
    pause = [x for x, _ in VLLM_LINES]
    assert 0 <= p["python_s"] < 10
    assert close(p["torch_import_s"], 0.2) and close(p["vllm_import_s"], 0.2)
    assert close(p["engine_config_s"], 0.3)  # until the engine-core process started (from the kernel)
    assert close(p["core_spawn_s"], pause[0])  # until its first line
    assert close(p["device_init_s"], pause[1])
    assert close(p["weights_s"], pause[2] + pause[3])
    assert close(p["compile_s"], sum(pause[4:7]))
    assert close(p["profile_s"], pause[7] + pause[8])
    assert close(p["kv_cache_warmup_s"], pause[9] + pause[10]) and p["cuda_graphs_s"] == 0.0
    assert close(p["handshake_s"], 0.4) and close(p["first_request_s"], 0.2)
    assert close(p["unaccounted_s"], 0.0) and close(p["total_s"], p["python_s"] + 0.7 + sum(pause) + 0.6, 0.5)
    assert p["compile_cache_hit"] is True and p["cuda_graphs"] is False and p["mp_method"] == "fork"
    assert p["vllm_says"] == {"weights_loaded": 0.15, "model_loaded": 0.412345, "dynamo": 0.05, "compiled": 0.48,
                              "profiled": 0.29, "init_engine": 1.02}


def test_lines_that_are_missing_leave_their_parts_none(tmp_path):
    # No compile line, no KV cache line, no graph line: another vLLM, or a line it no longer prints.
    keep = [VLLM_LINES[i] for i in (0, 1, 3)] + [(1.2, VLLM_LINES[10][1])]
    p = start(tmp_path, [(0.1, "some other line\r(EngineCore pid=7) progress 50%"), *keep])
    assert p["device_init_s"] is not None and p["weights_s"] is not None and p["handshake_s"] is not None
    assert p["compile_s"] is None and p["profile_s"] is None and p["kv_cache_warmup_s"] is None
    assert p["cuda_graphs_s"] is None and p["cuda_graphs"] is None and p["compile_cache_hit"] is None
    assert close(p["unaccounted_s"], 1.2)  # what no mark covers is said, not spread over other parts


def test_parts_without_a_log_or_vllm():
    # A transformers engine: imports, the model loaded, one request; nothing of vLLM.
    p = parts({"main": 0.2, "torch": 3.0, "ready": 8.0, "first": 8.5}, {})
    assert (p["python_s"], p["torch_import_s"], p["weights_s"], p["first_request_s"], p["total_s"]) == \
        (0.2, 2.8, 5.0, 0.5, 8.5)
    assert p["vllm_import_s"] is None and p["mp_method"] is None and p["unaccounted_s"] == 0.0
    assert all(p[k] is None for k in ("engine_config_s", "core_spawn_s", "compile_s", "cuda_graphs_s"))
    # Marks out of order (a line seen too late to place) give None, never a negative part.
    seen = {"core_init": (9.0, None), "load_start": (4.0, None)}
    assert parts({"main": 0.1, "torch": 1.0, "vllm": 2.0, "ready": 10.0}, seen)["device_init_s"] is None
    # A process /proc cannot place: every part None, and no error.
    assert parts({}, {})["total_s"] is None


@pytest.mark.parametrize("name", [name for name, _ in MARKS])
def test_every_mark_has_a_line_here_or_in_the_other_forms(name):
    import re

    others = {"forced_spawn": "We must use the `spawn` multiprocessing start method. Overriding",
              "compile_miss": "Compiling a graph for compile range (1, 65536) takes 30.10 s",
              "graphs_captured": "Graph capturing finished in 12 secs, took 0.50 GiB"}
    text = "\n".join([line for _, line in VLLM_LINES] + list(others.values()))
    assert re.search(dict(MARKS)[name], text)

"""The environment an engine host starts with (its caches, this Python's path, vLLM's settings),
and the end of its event loop."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

import pytest

from udfs.engine_client import HOST_ENV_DEFAULTS, host_env
from udfs.engines import close_loop


def test_host_env_sets_vllms_settings_where_the_environment_says_nothing(monkeypatch):
    for name in HOST_ENV_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    env = host_env({"VLLM_CACHE_ROOT": "/cache/vllm"})
    assert env["VLLM_USE_MEGA_AOT_ARTIFACT"] == "1"
    assert env["VLLM_WORKER_MULTIPROC_METHOD"] == "fork"
    assert env["TOKENIZERS_PARALLELISM"] == "false"
    assert env["VLLM_CACHE_ROOT"] == "/cache/vllm"
    assert env["PYTHONPATH"].split(os.pathsep) == [p for p in sys.path if p]


@pytest.mark.parametrize("name, value", [("VLLM_USE_MEGA_AOT_ARTIFACT", "0"),
                                         ("VLLM_WORKER_MULTIPROC_METHOD", "spawn")])
def test_host_env_keeps_what_the_environment_sets(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert host_env({})[name] == value


def test_host_env_caches_win_over_the_environment(monkeypatch):
    monkeypatch.setenv("VLLM_CACHE_ROOT", "/elsewhere")
    assert host_env({"VLLM_CACHE_ROOT": "/cache/vllm"})["VLLM_CACHE_ROOT"] == "/cache/vllm"


def _loop_with_a_waiting_handler() -> tuple[asyncio.AbstractEventLoop, asyncio.Task]:
    """A loop holding a task that waits for output forever, as vLLM's output handler does once
    its engine has shut down."""
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def handler():
        while True:
            await queue.get()

    task = loop.create_task(handler())
    loop.run_until_complete(asyncio.sleep(0))  # the handler now waits inside queue.get()
    return loop, task


def test_close_loop_ends_pending_tasks_before_closing(caplog):
    loop, task = _loop_with_a_waiting_handler()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        close_loop(loop)
        del task
        gc.collect()
    assert loop.is_closed()
    assert [r.getMessage() for r in caplog.records] == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the closed loop's, expected
def test_a_loop_closed_with_a_pending_task_logs_an_error(caplog):
    """What ``close_loop`` prevents: the error the engine host's log used to end with."""
    loop, task = _loop_with_a_waiting_handler()
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        loop.close()
        del task
        gc.collect()
    assert any("Task was destroyed but it is pending" in r.getMessage() for r in caplog.records)

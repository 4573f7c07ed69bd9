"""What the scoring tasks send back to the driver (through an accumulator), summed up per engine."""

from __future__ import annotations


def engine_summaries(tasks: list[dict]) -> list[dict]:
    """One entry per engine the tasks used: its device, start seconds, its compile cache (where,
    and whether an engine of the same spec had started with it before), tasks, and the seconds it
    spent computing (``busy_s``) and waiting for rows (``idle_s``) between the first of these
    tasks' connections and the last one's end. A high ``idle_s`` means the engine waited on Spark
    (reads, tokenizing): give the executor more task slots per GPU."""
    by_engine: dict[tuple, list[dict]] = {}
    for t in tasks:
        if t.get("engine_pid") is not None:
            by_engine.setdefault((t["engine_key"], t["engine_pid"]), []).append(t)
    out = []
    for (key, pid), spans in by_engine.items():
        e = {"key": key, "pid": pid, "device": spans[0]["engine_device"], "start_s": spans[0]["engine_start_s"],
             "cache_dir": spans[0].get("engine_cache_dir"), "cache_warm": spans[0].get("engine_cache_warm"),
             "tasks": len(spans), **engine_start_fields(spans[0])}
        for name in ("busy", "idle"):
            starts = [t[f"engine_{name}_start_s"] for t in spans if t.get(f"engine_{name}_start_s") is not None]
            ends = [t[f"engine_{name}_s"] for t in spans if t.get(f"engine_{name}_s") is not None]
            e[f"{name}_s"] = round(max(ends) - min(starts), 3) if starts and ends else None
        out.append(e)
    return out


def engine_start_fields(task: dict) -> dict:
    """How an engine started, as a task saw it: ``start_parts`` (where its start went,
    ``udfs.start_parts``), ``started_by`` (``prestart`` or ``task``), and the epoch seconds its
    process began (``process_started_at``) and it was ready (``ready_at``)."""
    return {"start_parts": task.get("engine_start_parts"), "started_by": task.get("engine_started_by"),
            "process_started_at": task.get("engine_process_started_at"), "ready_at": task.get("engine_ready_at")}

"""Device keys: one key per physical GPU however the engine was bound to it, one per executor on CPU."""

from __future__ import annotations

import os

import pytest

from udfs.devices import GpuView, device_key, nvidia_smi_gpus, visible_devices
from udfs.engines import EngineError, EngineSpec

UUIDS = {"GPU-0a0a0a0a-1111-2222-3333-444444444444": "0", "GPU-1b1b1b1b-1111-2222-3333-444444444444": "1",
         "GPU-2c2c2c2c-1111-2222-3333-444444444444": "2", "GPU-3d3d3d3d-1111-2222-3333-444444444444": "3"}
VLLM = EngineSpec(model_dir="m", backend="vllm")
TRANSFORMERS = EngineSpec(model_dir="m", backend="transformers")
PCI = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def node(visible: str | None = None, uuids=UUIDS, has_gpu: bool = True) -> GpuView:
    return GpuView(visible, uuids, has_gpu)


@pytest.mark.parametrize("visible, spec, spark", [
    (None, VLLM, ["0"]),  # nothing restricts the worker: CUDA's device 0
    ("2,3", VLLM, ["2"]),
    ("GPU-1b1b1b1b-1111-2222-3333-444444444444", VLLM, ["1"]),  # a UUID, resolved by nvidia-smi
    ("GPU-3d3d", TRANSFORMERS, ["3"]),  # a unique UUID prefix, as CUDA takes it
    ("3,1", EngineSpec(model_dir="m", backend="vllm", tensor_parallel_size=2), ["1", "3"]),
])
def test_a_gpu_bound_by_cuda_visible_devices_and_by_spark_gets_one_key(visible, spec, spark):
    by_env, env = device_key(None, spec, owner=7, view=node(visible))
    by_spark, spark_env = device_key(spark, spec, owner=8, view=node(None))
    assert by_env == by_spark
    assert sorted(env["CUDA_VISIBLE_DEVICES"].split(",")) == sorted(spark_env["CUDA_VISIBLE_DEVICES"].split(","))
    assert env["CUDA_DEVICE_ORDER"] == spark_env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_keys_name_nvidia_smi_indices_sorted_and_pin_the_host_there():
    assert device_key(["0"], VLLM, 1, node()) == ("gpu0", {"CUDA_VISIBLE_DEVICES": "0", **PCI})
    assert device_key(["3", "2"], VLLM, 1, node()) == ("gpu2-3", {"CUDA_VISIBLE_DEVICES": "3,2", **PCI})
    assert device_key(["10", "9"], VLLM, 1, node())[0] == "gpu9-10"
    # vLLM takes the first tensor_parallel_size visible devices, transformers the first one.
    assert device_key(None, EngineSpec(model_dir="m", backend="vllm", tensor_parallel_size=2), 1,
                      node("GPU-2c2c2c2c-1111-2222-3333-444444444444,0,1")) == \
        ("gpu0-2", {"CUDA_VISIBLE_DEVICES": "2,0", **PCI})
    assert device_key(None, TRANSFORMERS, 1, node("1,2")) == ("gpu1", {"CUDA_VISIBLE_DEVICES": "1", **PCI})


def test_what_cannot_be_resolved_keys_a_lock_of_its_own():
    uuid = "GPU-1b1b1b1b-1111-2222-3333-444444444444"
    assert device_key(None, VLLM, 1, node(uuid, uuids=None))[0] == f"gpu{uuid}"  # no nvidia-smi
    twins = {"GPU-ab12": "0", "GPU-ab34": "1"}
    assert device_key(None, VLLM, 1, node("GPU-ab", uuids=twins))[0] == "gpuGPU-ab"  # a prefix of several
    key, _ = device_key(["MIG-GPU-0a0a/1/0"], VLLM, 1, node())
    assert key == "gpuMIG-GPU-0a0a_1_0" and os.sep not in key


def test_engines_on_the_cpu_are_keyed_by_their_executor():
    cpu_only = node(None, uuids=None, has_gpu=False)
    assert device_key(None, TRANSFORMERS, 42, cpu_only) == ("cpu-42", {"CUDA_VISIBLE_DEVICES": ""})
    on_gpu_node = EngineSpec(model_dir="m", backend="transformers", device="cpu")
    assert device_key(None, on_gpu_node, 42, node())[0] == "cpu-42"
    assert device_key(None, TRANSFORMERS, 42, node(""))[0] == "cpu-42"  # every GPU hidden from the worker
    with pytest.raises(EngineError, match="no GPU is visible"):
        device_key(None, VLLM, 42, node("-1"))


def test_visible_devices_reads_cuda_visible_devices_as_cuda_does():
    assert visible_devices(None, 2) == ["0", "1"]
    assert visible_devices("3, 1,2", 2) == ["3", "1"]
    assert visible_devices("0,-1,2", 4) == ["0"]  # CUDA stops at the first invalid entry
    assert visible_devices("", 1) == []


def fake_nvidia_smi(tmp_path, body: str) -> str:
    """A PATH whose nvidia-smi runs ``body`` (a stand-in for a GPU node's driver tools)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "nvidia-smi"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return f"{bin_dir}:/usr/bin:/bin"


def test_nvidia_smi_gpus_reads_indices_and_uuids(tmp_path, monkeypatch):
    rows = "\\n".join(f"{i}, {u}" for u, i in UUIDS.items())
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, f'case "$*" in *index,uuid*) printf "{rows}\\n" ;; esac'))
    assert nvidia_smi_gpus() == UUIDS


def test_nvidia_smi_gpus_without_a_working_nvidia_smi(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert nvidia_smi_gpus() is None
    monkeypatch.setenv("PATH", fake_nvidia_smi(tmp_path, 'echo "No devices were found"; exit 6'))
    assert nvidia_smi_gpus() is None

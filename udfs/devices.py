"""Which GPUs an engine will run on, and the device key that names them.

An engine host holds an exclusive lock named by its device key (``udfs.engine_host``), so two
hosts that would share a GPU must get the same key, however each was bound to it:

- through Spark's resource scheduler: the task's GPU addresses, which the discovery script
  (``bootstrap/gpu-discovery.sh``) reads from ``nvidia-smi``, so they are nvidia-smi indices;
- through ``CUDA_VISIBLE_DEVICES``, when Spark gives the task no GPU: the first visible device
  (the first ``tensor_parallel_size`` for vLLM), or device 0 (0 … n-1) when nothing restricts
  them. An entry is an index or a GPU UUID (``GPU-…``, or a unique prefix of one).

The rule: every device is named by its nvidia-smi index, and the key is ``gpu`` and the sorted
indices joined by ``-`` (``gpu0``, ``gpu2-3``). A UUID becomes its index through
``nvidia-smi --query-gpu=index,uuid``; an index is taken as an nvidia-smi index, and the host runs
with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and ``CUDA_VISIBLE_DEVICES`` set to those indices, so that
CUDA numbers the GPUs as nvidia-smi does (both in PCI bus order). What cannot be known: without
nvidia-smi a UUID stays as it is and keys a lock of its own (``gpuGPU-…``) that does not exclude
the same GPU named by its index; and ``MIG-…`` devices are keyed by their own names.

An engine on the CPU is keyed by its executor, ``cpu-<executor pid>``, and sees no GPU.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Mapping

from udfs.engines import EngineError, EngineSpec

_ENTRY = re.compile(r"^(\d+|GPU-[0-9a-fA-F-]+|MIG-[\w/-]+)$")


def nvidia_smi_gpus(timeout_s: float = 10.0) -> dict[str, str] | None:
    """The node's GPUs as ``{UUID: nvidia-smi index}``; None without a working ``nvidia-smi``."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, "--query-gpu=index,uuid", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    gpus = {}
    for line in proc.stdout.splitlines():
        index, _, uuid = (part.strip() for part in line.partition(","))
        if index.isdigit() and uuid:
            gpus[uuid] = index
    return gpus


@functools.lru_cache(maxsize=1)
def _node_gpus() -> dict[str, str] | None:
    return nvidia_smi_gpus()


@dataclass(frozen=True)
class GpuView:
    """What a worker can know about the GPUs it may use."""

    visible: str | None  # CUDA_VISIBLE_DEVICES as the worker has it; None when unset
    uuids: Mapping[str, str] | None  # GPU UUID -> nvidia-smi index; None without nvidia-smi
    has_gpu: bool  # an NVIDIA driver is loaded on this node

    @classmethod
    def of_this_process(cls) -> GpuView:
        """This process's view (asks nvidia-smi once per process, and only on a GPU node)."""
        has_gpu = os.path.exists("/dev/nvidiactl")
        return cls(os.environ.get("CUDA_VISIBLE_DEVICES"), _node_gpus() if has_gpu else None, has_gpu)

    def index_of(self, device: str) -> str:
        """The nvidia-smi index of a device entry (an index, a UUID or a UUID prefix), or the
        entry itself when it cannot be resolved."""
        if device.isdigit() or not self.uuids:
            return device
        matches = {index for uuid, index in self.uuids.items() if uuid.startswith(device)}
        return matches.pop() if len(matches) == 1 else device


def visible_devices(visible: str | None, count: int) -> list[str]:
    """The first ``count`` devices CUDA would number 0, 1, …: entries of ``visible`` up to the
    first invalid one (as CUDA reads it), or indices 0 … count-1 when it is unset."""
    if visible is None:
        return [str(i) for i in range(count)]
    devices = []
    for entry in visible.split(","):
        entry = entry.strip()
        if not _ENTRY.match(entry):
            break
        devices.append(entry)
    return devices[:count]


def device_key(gpus: list[str] | None, spec: EngineSpec, owner: int,
               view: GpuView | None = None) -> tuple[str, dict[str, str]]:
    """The device key of the engine ``spec`` describes, and the environment that pins the engine
    host to those devices. ``gpus``: the task's GPU addresses from Spark, if any; ``owner``: the
    executor's pid; ``view``: this process's view of the GPUs unless given."""
    view = view or GpuView.of_this_process()
    if gpus:
        devices = list(gpus)
    elif spec.backend == "vllm" or (view.has_gpu and spec.device != "cpu"):
        devices = visible_devices(view.visible, spec.tensor_parallel_size if spec.backend == "vllm" else 1)
        if not devices and spec.backend == "vllm":
            raise EngineError(f"no GPU is visible to this worker (CUDA_VISIBLE_DEVICES={view.visible!r}) for vLLM")
    else:
        devices = []
    if not devices:
        return f"cpu-{owner}", {"CUDA_VISIBLE_DEVICES": ""}
    names = [view.index_of(d) for d in devices]
    ordered = sorted(names, key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))
    env = {"CUDA_VISIBLE_DEVICES": ",".join(names), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    return re.sub(r"[^\w.-]", "_", "gpu" + "-".join(ordered)), env

"""What `bench throughput` counts besides the wall clock: FLOPs and time inside the backward pass, the GPU's dense
peak, the peak of live tensors, and the meta device made to run a whole training step (shapes, FLOPs and memory
without data)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
}
"""Dense bf16 tensor-core peaks (NVIDIA data sheets), by a substring of torch.cuda.get_device_name()."""


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


@contextlib.contextmanager
def host_reads_of_meta_tensors():
    """Device-to-host reads of meta tensors (which hold no data) give zeros, as a GPU's would give numbers, so a
    training step runs on the meta device: shapes and FLOPs without compute, and every op refusing to mix devices
    as CUDA does (CPU scalars aside), which is how a CPU-only machine finds a CPU tensor meeting a GPU one."""
    saved = {name: getattr(torch.Tensor, name) for name in ("cpu", "to", "item", "tolist", "__float__")}

    def to(t, *args, **kwargs):
        try:
            return saved["to"](t, *args, **kwargs)
        except NotImplementedError:  # "cannot copy out of meta tensor": a move off the meta device
            if not t.is_meta:
                raise
            return saved["to"](torch.zeros(t.shape, dtype=t.dtype), *args, **kwargs)

    torch.Tensor.to = to
    torch.Tensor.cpu = lambda t, *a, **k: torch.zeros(t.shape, dtype=t.dtype) if t.is_meta else saved["cpu"](t, *a, **k)
    torch.Tensor.item = lambda t: 0.5 if t.is_meta else saved["item"](t)
    torch.Tensor.tolist = lambda t: torch.zeros(t.shape, dtype=t.dtype).tolist() if t.is_meta else saved["tolist"](t)
    torch.Tensor.__float__ = lambda t: 0.5 if t.is_meta else saved["__float__"](t)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@dataclasses.dataclass
class BackwardMeter:
    """Wall time and FLOPs spent inside Tensor.backward while `watching`."""

    seconds: float = 0.0
    flops: int = 0
    count_flops: bool = False
    timed: bool = True

    @contextlib.contextmanager
    def watching(self, device: torch.device):
        original = torch.Tensor.backward

        def timed_backward(tensor, *args, **kwargs):
            if self.timed:
                synchronize(device)
            start = time.perf_counter()
            if self.count_flops:
                with FlopCounterMode(display=False) as counter:
                    original(tensor, *args, **kwargs)
                self.flops += counter.get_total_flops()
            else:
                original(tensor, *args, **kwargs)
            if self.timed:
                synchronize(device)
            self.seconds += time.perf_counter() - start

        torch.Tensor.backward = timed_backward
        try:
            yield self
        finally:
            torch.Tensor.backward = original


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class LiveMemory(TorchDispatchMode):
    """The bytes of every tensor storage alive on `device` while the mode is on, and their peak: those alive when it
    starts (weights, optimizer moments, caches), then each op's outputs (activations, gradients, temporaries) until
    they are freed. On the meta device, which allocates nothing, this is what a GPU would hold in tensors: without its
    allocator's caching and fragmentation or the kernels' workspaces, which come on top."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def __enter__(self):
        gc.collect()
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device == self.device:
                self._add(obj)
        return super().__enter__()

    def _add(self, tensor: torch.Tensor) -> None:
        if tensor.device != self.device:
            return
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.live:
            return
        self.live[key] = storage.nbytes()
        self.current += self.live[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor):
                self._add(value)
        return out

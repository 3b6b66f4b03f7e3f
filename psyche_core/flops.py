"""Model FLOPs per token, peak FLOP/s of the device, and so MFU.

FLOPs per token follow the usual training estimate (Kaplan et al., PaLM appendix B): each
weight of a matmul costs 6 FLOPs per token (2 forward, 4 backward), and attention's two
``T x T`` products cost ``12 * layers * attention_width * T`` (no causal halving, as PaLM
counts). Embedding lookups cost nothing; a tied output head is counted once, as a matmul.
Recomputation (activation checkpointing) is not counted: MFU is *model* FLOPs utilisation.

Peak FLOP/s comes from a table of known GPUs (dense, per dtype) or, on a CPU, from
``psyche bench peak``: a short matmul measurement cached per machine under
``~/.cache/psyche`` (``PSYCHE_CACHE_DIR`` moves it).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Dense peak FLOP/s of known GPUs by the dtype matmuls run in (vendor datasheets; float32 is
# the non-tensor-core rate, as torch does not use TF32 for float32 matmuls by default).
GPU_PEAK_FLOPS: dict[str, dict[torch.dtype, float]] = {
    "H200": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "H100 PCIe": {torch.bfloat16: 756e12, torch.float16: 756e12, torch.float32: 51e12},
    "H100": {torch.bfloat16: 989e12, torch.float16: 989e12, torch.float32: 67e12},
    "A100": {torch.bfloat16: 312e12, torch.float16: 312e12, torch.float32: 19.5e12},
    "L40S": {torch.bfloat16: 362e12, torch.float16: 362e12, torch.float32: 91.6e12},
    "L4": {torch.bfloat16: 121e12, torch.float16: 121e12, torch.float32: 30.3e12},
    "A10G": {torch.bfloat16: 70e12, torch.float16: 70e12, torch.float32: 31.2e12},
    "RTX 4090": {torch.bfloat16: 165e12, torch.float16: 165e12, torch.float32: 82.6e12},
    "V100": {torch.float16: 125e12, torch.float32: 15.7e12},
}


def matmul_parameters(model: nn.Module) -> int:
    """Weights of every ``nn.Linear`` (a shared weight once): those cost FLOPs per token."""
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def default_flops_per_token(model: nn.Module, config: Any, sequence_length: int) -> float:
    """``6 * matmul weights + 12 * layers * attention width * T`` (see the module doc)."""
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads else 0)
    attention = 12 * layers * heads * int(head_dim) * sequence_length
    return 6.0 * matmul_parameters(model) + attention


# -- peak FLOP/s -------------------------------------------------------------------------------


def gpu_peak_flops(name: str, dtype: torch.dtype) -> float | None:
    """The table's entry for a CUDA device name (``NVIDIA H100 80GB HBM3``), or ``None``."""
    for key, peaks in GPU_PEAK_FLOPS.items():  # the table lists specific names first
        if key in name:
            return peaks.get(dtype)
    return None


def cache_dir() -> Path:
    return Path(os.environ.get("PSYCHE_CACHE_DIR") or Path.home() / ".cache" / "psyche")


def machine_key() -> str:
    """What a cached CPU measurement belongs to: host, CPU model, threads and torch."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}|{cpu}|threads={torch.get_num_threads()}|torch={torch.__version__}"


def measure_cpu_peak(dtype: torch.dtype, size: int = 1024, seconds: float = 0.5) -> float:
    """Best matmul FLOP/s of ``size x size`` products on this CPU over about ``seconds``."""
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG alone
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)  # warm up (thread pool, kernel choice)
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        elapsed = time.perf_counter() - start
        best = max(best, 2 * size**3 / elapsed)
        if time.perf_counter() > deadline:
            return best


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def cached_cpu_peaks() -> dict[str, float]:
    path = cache_dir() / "peak_flops.json"
    try:
        return dict(json.loads(path.read_text()).get(machine_key(), {}))
    except (OSError, ValueError, AttributeError):
        return {}


def machine_busy() -> bool:
    """Whether other work is using the CPUs now (1-minute load average above 3/4 of the cores):
    a peak measured then is low, and every later MFU would read high."""
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):  # no load average on this platform
        return False
    return load > 0.75 * (os.cpu_count() or 1)


def bench_cpu_peaks(
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16), cache: bool = True
) -> dict:
    """Measure this machine's peak matmul FLOP/s per dtype and, with ``cache``, keep it for
    later runs (``psyche bench peak``)."""
    found = {_dtype_name(d): measure_cpu_peak(d) for d in dtypes}
    if not cache:
        return found
    path = cache_dir() / "peak_flops.json"
    try:
        everything = json.loads(path.read_text())
    except (OSError, ValueError):
        everything = {}
    everything[machine_key()] = {**everything.get(machine_key(), {}), **found}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(everything, indent=1))
    tmp.replace(path)
    return found


def peak_flops(device: torch.device, dtype: torch.dtype, measure: bool = True) -> float | None:
    """Peak FLOP/s of ``device`` for matmuls in ``dtype``: the GPU table, or the cached CPU
    measurement (measured now, about a second, when ``measure`` and none is cached)."""
    if device.type == "cuda":
        return gpu_peak_flops(torch.cuda.get_device_name(device), dtype)
    if device.type != "cpu":
        return None
    peaks = cached_cpu_peaks()
    if _dtype_name(dtype) not in peaks and measure:
        # measured now either way; kept for later runs only when the machine is idle
        peaks = bench_cpu_peaks((dtype,), cache=not machine_busy())
    return peaks.get(_dtype_name(dtype))

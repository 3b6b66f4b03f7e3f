"""Named DisTrO settings for ``--distro-preset``: those of Psyche's and DeMo's configurations
(design distro.md 3.1), as option values keyed like ``Options`` attributes. A preset fills in
only the options a run does not set itself, and never changes what a flag means. No torch
import here (plugin listing stays fast)."""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # Psyche's single-process `train` example defaults (examples/train.rs)
    "psyche-train": {
        "compression_chunk": 64,
        "compression_topk": 4,
        "compression_decay": 0.999,
        "distro_quantization": False,
        "distro_mode": "psyche",
        "weight_decay": 0.1,
    },
    # Psyche's llama2-20m configs and the psyche-book run-config example: k = 8, 1-bit values
    "psyche-20m": {
        "compression_chunk": 64,
        "compression_topk": 8,
        "compression_decay": 0.999,
        "distro_quantization": True,
        "distro_mode": "psyche",
    },
    # the 40B Consilience run
    "consilience": {
        "compression_chunk": 64,
        "compression_topk": 4,
        "compression_decay": 0.995,
        "distro_quantization": True,
        "distro_mode": "psyche",
        "weight_decay": 0.1,
    },
    # DeMo's OLMo configurations (synchronous, k = 32, no weight decay)
    "demo": {
        "compression_chunk": 64,
        "compression_topk": 32,
        "compression_decay": 0.999,
        "distro_quantization": False,
        "distro_mode": "sync",
        "weight_decay": 0.0,
    },
    # models of a few million parameters: benchmarks/distro_study.py found chunk 32 clearly
    # ahead of chunk 64 at top-k 4 on llama:tiny and llama:20m (still >= 165x fewer bytes than
    # AdamW); use it with a larger lr than AdamW's (4e-3 to 8e-3 there)
    "small": {
        "compression_chunk": 32,
        "compression_topk": 4,
        "compression_decay": 0.999,
        "distro_quantization": False,
        "distro_mode": "psyche",
    },
    # control run: every coefficient sent, i.e. sign-SGD on the momentum
    "sign-sgd": {
        "compression_chunk": 64,
        "compression_topk": 4096,
        "compression_decay": 0.999,
        "distro_quantization": False,
        "distro_mode": "sync",
    },
}

PRESET_HELP: dict[str, str] = {
    "psyche-train": "chunk 64, top-k 4, decay 0.999 (Psyche's train example)",
    "psyche-20m": "top-k 8, 1-bit (Psyche's llama2-20m configs)",
    "consilience": "top-k 4, decay 0.995, 1-bit (the 40B run)",
    "demo": "top-k 32, sync mode, no weight decay (DeMo's OLMo runs)",
    "small": "chunk 32, top-k 4 (best for models of a few M parameters in our study)",
    "sign-sgd": "every coefficient sent (the control run)",
}
assert PRESET_HELP.keys() == PRESETS.keys()

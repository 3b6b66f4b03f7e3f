"""``--precision``: which dtype parameters live in and which dtype forward/backward compute in.

Names follow Lightning/litgpt: ``32-true`` (float32 everywhere), ``bf16-true`` (bfloat16
parameters, gradients and optimizer state: Psyche's ``--dtype bfloat16``) and ``bf16-mixed``
(float32 master parameters, gradients and optimizer state; forward and backward under
``torch.autocast`` in bfloat16). ``--dtype`` stays Psyche's way to name the parameter dtype and
must agree with ``--precision`` when both are given.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from psyche_core.errors import PsycheError

# What --dtype alone means, for each parameter dtype it names.
_PRECISION_OF_DTYPE = {"float32": "32-true", "bfloat16": "bf16-true", "float16": "16-true"}


@dataclass(frozen=True)
class Precision:
    """A resolved ``--precision``: parameter dtype, and the autocast dtype (``None``: none)."""

    name: str
    param_dtype: torch.dtype
    autocast_dtype: torch.dtype | None = None

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype matmuls run in (what peak FLOP/s and MFU are measured against)."""
        return self.autocast_dtype or self.param_dtype


def resolve_precision(precision: str | None, dtype: str | None, device: torch.device) -> Precision:
    """The run's precision from ``--precision`` and ``--dtype`` (either, both or neither).

    Defaults: ``32-true`` on CPU (and MPS), ``bf16-mixed`` on CUDA.
    """
    if precision is not None and dtype is not None:
        implied = _PRECISION_OF_DTYPE[dtype]
        mixed_ok = precision == "bf16-mixed" and dtype == "float32"
        if implied != precision and not mixed_ok:
            raise PsycheError(
                f"--dtype {dtype} conflicts with --precision {precision} (which keeps "
                f"parameters in {_param_dtype_name(precision)}); give only --precision"
            )
    if precision is None:
        if dtype is not None:
            precision = _PRECISION_OF_DTYPE[dtype]
        else:
            precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    if precision.startswith("bf16"):
        check_bf16_supported(device, f"--precision {precision}")
    if precision == "32-true":
        return Precision(precision, torch.float32)
    if precision == "bf16-true":
        return Precision(precision, torch.bfloat16)
    if precision == "bf16-mixed":
        return Precision(precision, torch.float32, torch.bfloat16)
    if precision == "16-true":
        return Precision(precision, torch.float16)
    raise PsycheError(f"--precision {precision!r} is unknown; use 32-true, bf16-true or bf16-mixed")


def _param_dtype_name(precision: str) -> str:
    return "bfloat16" if precision == "bf16-true" else "float32"


def check_bf16_supported(device: torch.device, what: str) -> None:
    """One clear line when ``device`` cannot compute in bfloat16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise PsycheError(f"{what}: {name} does not support bfloat16; use --precision 32-true")
    if device.type == "mps":
        try:
            torch.ones(1, dtype=torch.bfloat16, device=device)
        except (RuntimeError, TypeError):
            raise PsycheError(
                f"{what}: this MPS device does not support bfloat16 (macOS 14 or newer "
                "needed); use --precision 32-true"
            ) from None

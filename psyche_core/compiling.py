"""``--compile``: regional ``torch.compile`` of a model's repeated blocks and of its loss.

Each decoder layer is compiled in place (``nn.Module.compile``), so the state-dict keys stay
the model's own (no ``_orig_mod.`` prefix) and checkpoints are unchanged. The layers share
their code, so dynamo compiles one graph and reuses it for every layer: compile time does not
grow with depth. The chunked LM-head loss (``psyche_core.losses``) compiles its per-chunk
softmax and gradient pass, which in eager mode is four passes over ``(rows, vocab)`` logits.
"""

from __future__ import annotations

import shutil

import torch
from torch import nn

from psyche_core.errors import PsycheError
from psyche_core.losses import compile_loss


def compiler_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` here, or ``None`` when it can."""
    try:
        import torch._dynamo as dynamo
    except ImportError as exc:  # pragma: no cover - torch without dynamo
        return f"torch {torch.__version__} has no torch._dynamo ({exc})"
    if not dynamo.is_dynamo_supported():
        return f"torch.compile does not support this Python/torch ({torch.__version__})"
    if device.type == "cpu":
        # inductor's CPU backend builds C++ kernels
        from torch._inductor import config

        compiler = config.cpp.cxx[-1] if isinstance(config.cpp.cxx, tuple) else config.cpp.cxx
        if not any(shutil.which(c) for c in (compiler, "g++", "c++", "clang++") if c):
            return "no C++ compiler found (inductor needs g++ or clang++ for CPU kernels)"
    elif device.type == "mps":
        return "torch.compile's inductor backend does not support MPS training here"
    return None


def resolve_compile(mode: str, device: torch.device) -> tuple[bool, str]:
    """``(compile?, note)`` for ``--compile off|on|auto``; ``on`` where the compiler cannot run
    is an error, ``auto`` falls back to eager with a note."""
    if mode == "off":
        return False, ""
    problem = compiler_problem(device)
    if problem is None:
        return True, ""
    if mode == "auto":
        return False, f"--compile auto: running eager ({problem})"
    raise PsycheError(f"--compile: {problem}; use --compile auto to fall back to eager")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The items of the outermost ``ModuleList``s whose items all share one class (a model's
    decoder layers); nothing inside them is listed again."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if (
                isinstance(child, nn.ModuleList)
                and len(child) >= 1
                and len({type(m) for m in child}) == 1
            ):
                found.extend(child)
            else:
                visit(child)

    visit(model)
    return found


def compile_regions(model: nn.Module) -> int:
    """Compile every repeated block of ``model`` in place, and the chunked loss of its
    ``lm_head`` (transformers' name) where it has one; returns how many blocks."""
    blocks = repeated_blocks(model)
    for block in blocks:
        block.compile()
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module):
        compile_loss(head)
    return len(blocks)

"""transformers' own tensor-parallel plans as DTensor ``parallelize_module`` plans.

transformers declares how each architecture splits (``config.base_model_tp_plan``, keys like
``"layers.*.self_attn.q_proj"`` relative to the base model, and the causal-LM class's
``_tp_plan`` for ``lm_head``), with style names of its own. psyche maps the styles that are
Megatron's column / row split to torch's ``ColwiseParallel`` / ``RowwiseParallel``, prefixes the
base model's keys with its attribute name (``model.``; the wrapper adopts transformers' module
tree, so those are psyche's names too) and refuses any other style with one line: packed and
expert-parallel styles need transformers' own runtime hooks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from psyche_core import parallel
from psyche_core.errors import PsycheError


def _styles() -> dict[str, Callable[[], Any]]:
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    return {
        "colwise": ColwiseParallel,
        "rowwise": RowwiseParallel,
        # the LM head: each rank its vocabulary columns, logits gathered for the loss
        "colwise_gather_output": lambda: ColwiseParallel(output_layouts=Replicate()),
        "colwise_rep": lambda: ColwiseParallel(output_layouts=Replicate()),  # transformers 4
        # a row-parallel layer fed a whole (replicated) input, which it splits itself
        "rowwise_split_input": lambda: RowwiseParallel(input_layouts=Replicate()),
        "rowwise_rep": lambda: RowwiseParallel(input_layouts=Replicate()),  # transformers 4
        # the embedding by vocabulary rows; the masked partial lookups are all-reduced
        "embedding_rowwise": lambda: RowwiseParallel(input_layouts=Replicate()),
    }


#: config fields whose values must be multiples of the degree (heads split whole)
DIVIDED_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")


def transformers_plan(model: Any) -> dict[str, str]:
    """transformers' plan for ``model`` (a ``PreTrainedModel``), keys from the top module;
    ``{}`` when the architecture declares none."""
    base_plan = getattr(model.config, "base_model_tp_plan", None) or {}
    if not base_plan:
        return {}
    prefix = getattr(model, "base_model_prefix", "")
    prefix = f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""
    plan = {prefix + key: style for key, style in base_plan.items()}
    # the head's entry is a class attribute (transformers copies it onto instances)
    plan.update(getattr(type(model), "_tp_plan", None) or {})
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(embeddings, nn.Embedding):  # transformers 5 splits it whenever a plan exists
        for name, module in model.named_modules():
            if module is embeddings:
                plan.setdefault(name, "embedding_rowwise")
    return plan


def dtensor_plan(model: Any, degree: int, describe: str) -> dict[str, Any] | None:
    """The DTensor plan for ``model`` at ``degree`` ranks, or None when transformers has none."""
    plan = transformers_plan(model)
    if not plan:
        return None
    config = model.config
    sizes = {field: getattr(config, field, None) for field in DIVIDED_FIELDS}
    parallel.require_divisible(degree, {k: v for k, v in sizes.items() if isinstance(v, int)})
    styles = _styles()
    unknown = sorted({style for style in plan.values() if style not in styles})
    if unknown:
        raise PsycheError(
            f"{describe}: transformers' tensor-parallel plan uses {', '.join(unknown)}, which "
            f"psyche cannot express with DTensor (it maps {', '.join(sorted(styles))}); run it "
            "with --tensor-parallelism 1"
        )
    # One parameter cannot take two layouts: tied embeddings stay whole, as the vocabulary
    # does when the degree does not divide it (Llama's plan does the same).
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab_whole = (
        head is None
        or embed is None
        or head.weight is embed.weight
        or head.weight.shape[0] % degree != 0
    )
    out: dict[str, Any] = {}
    for key, style in plan.items():
        modules = _matching(model, key)
        if not modules:  # a module this config leaves out; a parameter cannot be split so
            if _matching_parameters(model, key):
                raise PsycheError(
                    f"transformers' tensor-parallel plan splits the parameter {key} ({style}), "
                    "which psyche cannot express with DTensor; run it with --tensor-parallelism 1"
                )
            continue
        if vocab_whole and any(m is head or m is embed for m in modules):
            continue
        _check_split(modules, key, style, degree)
        out[key] = styles[style]()
    return out


def _matching(model: nn.Module, pattern: str) -> list[nn.Module]:
    """The modules a plan key names (``*`` matches one name, as ``parallelize_module``)."""
    from fnmatch import fnmatch

    parts = pattern.split(".")
    found = []
    for name, module in model.named_modules():
        names = name.split(".")
        if len(names) == len(parts) and all(fnmatch(n, p) for n, p in zip(names, parts)):
            found.append(module)
    return found


def _matching_parameters(model: nn.Module, pattern: str) -> list[str]:
    from fnmatch import fnmatch

    parts = pattern.split(".")
    return [
        name
        for name, _ in model.named_parameters()
        if len(name.split(".")) == len(parts)
        and all(fnmatch(n, p) for n, p in zip(name.split("."), parts))
    ]


def _check_split(modules: list[nn.Module], key: str, style: str, degree: int) -> None:
    """Every module a column / row style splits is a Linear (or Embedding) of a divisible size."""
    for module in modules:
        if isinstance(module, nn.Embedding):
            size, what = module.num_embeddings, "rows"
        elif isinstance(module, nn.Linear):
            column = style.startswith("colwise")
            size = module.out_features if column else module.in_features
            what = "output features" if column else "input features"
        else:
            raise PsycheError(
                f"transformers' tensor-parallel plan splits {key} ({type(module).__name__}), "
                "which psyche can split only as a Linear or Embedding; run it with "
                "--tensor-parallelism 1"
            )
        if size % degree:
            raise PsycheError(
                f"--tensor-parallelism {degree} must divide the {what} of {key} ({size}); "
                "pick a divisor"
            )

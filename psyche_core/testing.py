"""A conformance kit for model-plugin authors.

Call it from your own tests with a tiny config of your model::

    from psyche_core.testing import check_causal_lm

    def test_conformance(tmp_path):
        check_causal_lm(MyModelForCausalLM, {"vocab_size": 64, "hidden_size": 32, ...}, tmp_path)

Each check raises ``AssertionError`` saying what is wrong. They are also importable one by one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from psyche_core.model import CausalLM, CausalLMOutput


def _batch(model: CausalLM, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.vocab_size, (batch, length), generator=generator)


def check_seeded_init(cls: type[CausalLM], config: Mapping[str, Any]) -> None:
    """The same seed gives the same weights; another seed gives others."""
    a = cls.from_config(config, seed=1).state_dict()
    b = cls.from_config(config, seed=1).state_dict()
    c = cls.from_config(config, seed=2).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), f"from_config(seed=1) differs between calls at {key}"
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()), (
        "from_config gives the same weights for seeds 1 and 2"
    )


def check_forward_contract(model: CausalLM, batch: int = 2, length: int = 12) -> None:
    """Shapes, loss dtype and the optional arguments of ``forward``."""
    model.eval()
    ids = _batch(model, batch, length)
    with torch.no_grad():
        out = model(ids, labels=ids)
        assert isinstance(out, tuple) and len(out) == 2, "forward must return (logits, loss)"
        out = CausalLMOutput(*out)
        assert out.logits is not None and out.logits.shape == (batch, length, model.vocab_size), (
            f"logits shape {tuple(out.logits.shape) if out.logits is not None else None}, "
            f"expected {(batch, length, model.vocab_size)}"
        )
        assert out.loss is not None and out.loss.dim() == 0, "loss must be a scalar"
        assert out.loss.dtype == torch.float32, f"loss dtype {out.loss.dtype}, expected float32"
        assert torch.isfinite(out.loss), "loss is not finite at init"
        no_labels = model(ids)
        assert no_labels[1] is None, "loss must be None without labels"
        kept = model(ids, num_logits_to_keep=3)[0]
        assert kept is not None and kept.shape == (batch, 3, model.vocab_size), (
            "num_logits_to_keep=3 must give logits for the last 3 positions"
        )
        torch.testing.assert_close(kept, out.logits[:, -3:], rtol=1e-5, atol=1e-5)
        lean = model(ids, labels=ids, return_logits=False)[1]
        torch.testing.assert_close(lean, out.loss, msg="return_logits=False changed the loss")
        # Labels are shifted inside: -100 everywhere means no loss terms (nan or 0 is fine),
        # while a manual cross entropy on shifted labels must equal the model's loss.
        manual = torch.nn.functional.cross_entropy(
            out.logits[:, :-1].reshape(-1, model.vocab_size).float(), ids[:, 1:].reshape(-1)
        )
        torch.testing.assert_close(out.loss, manual, rtol=1e-5, atol=1e-5)


def check_causal(model: CausalLM, length: int = 12) -> None:
    """Changing a token never changes the logits of earlier positions."""
    model.eval()
    ids = _batch(model, 1, length)
    changed = ids.clone()
    changed[0, length // 2] = (changed[0, length // 2] + 1) % model.vocab_size
    with torch.no_grad():
        a = model(ids)[0]
        b = model(changed)[0]
    assert a is not None and b is not None
    torch.testing.assert_close(
        a[:, : length // 2], b[:, : length // 2], msg="logits depend on future tokens"
    )


def check_overfits(model: CausalLM, steps: int = 40, lr: float = 1e-2) -> None:
    """AdamW on one repeated batch drives the loss down to under half its start."""
    model.train()
    ids = _batch(model, 2, 16, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    first = last = None
    for _ in range(steps):
        loss = model(ids, labels=ids)[1]
        assert loss is not None and torch.isfinite(loss), "loss became non-finite"
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = loss.item()
        first = last if first is None else first
    assert first is not None and last is not None
    assert last < 0.5 * first, f"loss fell only from {first:.3f} to {last:.3f} in {steps} steps"


def check_save_load(model: CausalLM, directory: str | Path) -> None:
    """save_pretrained then from_pretrained gives the same weights and the same logits."""
    model.eval()
    model.save_pretrained(directory)
    loaded = type(model).from_pretrained(directory)
    loaded.eval()
    assert set(loaded.state_dict()) == set(model.state_dict()), "state-dict keys changed"
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value.float(), msg=key)
    ids = _batch(model, 2, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids)[0], model(ids)[0].float())


def check_packed_sequences(model: CausalLM, lengths: tuple[int, ...] = (5, 7)) -> None:
    """With ``sequence_lengths`` every document gets the logits it gets alone."""
    model.eval()
    ids = _batch(model, 1, sum(lengths))
    with torch.no_grad():
        packed = model(ids, sequence_lengths=[list(lengths)])[0]
        start = 0
        for n in lengths:
            alone = model(ids[:, start : start + n])[0]
            assert packed is not None and alone is not None
            torch.testing.assert_close(
                packed[:, start : start + n],
                alone,
                rtol=1e-4,
                atol=1e-5,
                msg=f"document at {start}..{start + n} sees other documents",
            )
            start += n


def check_activation_checkpointing(
    model: CausalLM, mode: str, block: torch.nn.Module, batch: int = 2, length: int = 16
) -> None:
    """``--activation-checkpointing mode`` gives the loss and gradients of no checkpointing
    (up to float rounding), and really recomputes: the first linear layer of ``block`` (a
    decoder layer) runs again during backward."""
    ids = _batch(model, batch, length, seed=3)
    model.train()
    results = []
    for current in ("none", mode):
        model.set_activation_checkpointing(current)
        calls = []
        # a leaf inside the block: module hooks and wrapped forwards (transformers) do not
        # see the recomputation, but every matmul inside it runs again
        leaf = next(m for m in block.modules() if isinstance(m, torch.nn.Linear))
        forward = leaf.forward

        def counted(
            *args: Any, _calls: list = calls, _forward: Any = forward, **kwargs: Any
        ) -> Any:
            _calls.append(1)  # module hooks do not fire on recomputation, so count here
            return _forward(*args, **kwargs)

        leaf.forward = counted  # type: ignore[method-assign]
        try:
            model.zero_grad(set_to_none=True)
            loss = model(ids, labels=ids, return_logits=False).loss
            loss.backward()
        finally:
            del leaf.forward
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((loss.detach(), grads, len(calls)))
    model.set_activation_checkpointing("none")
    (plain_loss, plain_grads, plain_calls), (loss, grads, calls) = results
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    assert len(grads) == len(plain_grads)
    for a, b in zip(grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert plain_calls == 1 and calls == 2, f"{mode}: the block ran {calls} times, expected 2"


def check_causal_lm(
    cls: type[CausalLM],
    config: Mapping[str, Any],
    tmp_path: str | Path,
    packed_sequences: bool = True,
) -> None:
    """Every check above on a model built from ``config``."""
    assert issubclass(cls, CausalLM), f"{cls.__name__} does not subclass psyche_core CausalLM"
    check_seeded_init(cls, config)
    model = cls.from_config(config, seed=0)
    check_forward_contract(model)
    check_causal(model)
    if packed_sequences:
        check_packed_sequences(model)
    check_save_load(model, Path(tmp_path) / "conformance-checkpoint")
    check_overfits(cls.from_config(config, seed=0))

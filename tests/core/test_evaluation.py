"""Held-out loss during training: --eval-every with --eval-holdout or a separate data set."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from psyche_core import run
from psyche_core.comm import LocalGroup
from psyche_core.errors import PsycheError
from psyche_core.evaluation import HeldOut, evaluate
from psyche_core.trainer import Trainer, TrainerConfig
from tests.core.test_trainer import TOY, CaptureGrads, ConstantLR, options
from tests.core.toy_plugin import PatternData, ToyForCausalLM


def test_holdout_sequences_are_never_trained_on():
    data = PatternData(sequence_length=12, n=64)
    held_out = HeldOut.holdout(data, count=10, micro_batch=4)
    model = ToyForCausalLM.from_config(TOY, seed=0)
    config = TrainerConfig(total_batch=8, total_steps=20, micro_batch=4)
    group = LocalGroup(2)
    seen = set()
    for rank in range(2):
        trainer = Trainer(
            model,
            data,
            CaptureGrads(model),
            ConstantLR(0.1),
            config,
            group.communicator(rank),
            held_out=held_out,
        )
        for step in range(1, 21):  # 160 samples: the 54 trainable ones wrap around three times
            seen.update(trainer.sample_ids(step))
        trainer._prefetch.close()
    assert seen == set(range(54))
    assert list(held_out.ids) == list(range(54, 64))


def test_val_loss_is_the_mean_over_every_held_out_token():
    data = PatternData(sequence_length=12, n=64)
    held_out = HeldOut.holdout(data, count=10, micro_batch=3)  # 3 + 3 + 3 + 1
    model = ToyForCausalLM.from_config(TOY, seed=0)
    model.train()
    metrics = evaluate(model, held_out, LocalGroup(1).communicator(0), torch.device("cpu"))
    assert model.training  # back in training mode
    batch = torch.as_tensor([s.input_ids for s in data.get_samples(range(54, 64))])
    with torch.no_grad():
        logits = model.eval()(batch).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 32), batch[:, 1:].reshape(-1))
    assert metrics["val_loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]))


def test_val_loss_in_the_metrics_and_equal_for_thread_and_process_peers(tmp_path, plugins):
    def losses(name, **layout):
        out = tmp_path / name
        flags = dict(eval_every=4, eval_holdout=16, seed=3, save_path=None, **layout)
        summary = run.train(options(out, metrics=str(out / "m.jsonl"), **flags), plugins)
        rows = [json.loads(line) for line in (out / "m.jsonl").read_text().splitlines()]
        assert summary["val_loss"] == rows[-1]["val_loss"]
        return {r["step"]: r["val_loss"] for r in rows if "val_loss" in r}

    one = losses("one")
    assert list(one) == [4, 8, 12]
    assert one[12] < one[4]  # held-out loss falls as the toy learns the pattern
    threads = losses("threads", peers=2, dp_backend="threads")
    processes = losses("gloo", peers=2, dp_backend="gloo")
    assert threads == processes
    assert threads == pytest.approx(one, rel=1e-5)


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"eval_every": 5}, "--eval-every 5 needs held-out data"),
        ({"eval_holdout": 8}, "give N"),
        ({"eval_every": 5, "eval_holdout": 64}, "--eval-holdout 64 leaves nothing to train on"),
        (
            {"eval_every": 5, "eval_holdout": 4, "eval_data_path": "x"},
            "give --eval-holdout or --eval-data-path/--eval-data-url, not both",
        ),
        ({"eval_every": -1}, "--eval-every must be >= 0"),
        ({"eval_every": 2, "eval_holdout": 4, "eval_batches": 2}, "--eval-batches must be"),
    ],
)
def test_bad_held_out_settings_are_one_clear_error(tmp_path, plugins, flags, message):
    with pytest.raises(PsycheError, match=message):
        run.train(options(tmp_path, **flags), plugins)


def test_plot_draws_the_held_out_loss(tmp_path):
    pytest.importorskip("matplotlib")
    from psyche_core.cli.plot import plot_runs

    rows = [
        {"step": s, "loss": 3.0 - 0.1 * s, "tokens": 64 * s, "tokens_per_s": 100.0}
        | ({"val_loss": 3.1 - 0.1 * s} if s % 2 == 0 else {})
        for s in range(1, 7)
    ]
    metrics = tmp_path / "m.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    import matplotlib.pyplot as plt

    drawn = []
    original = plt.Axes.plot
    plt.Axes.plot = lambda self, *a, **k: drawn.append(k.get("label")) or original(self, *a, **k)
    try:
        plot_runs([metrics], tmp_path / "c.png")
    finally:
        plt.Axes.plot = original
    assert drawn.count(f"{tmp_path.name} (held-out)") == 2  # against step and against tokens
    assert (tmp_path / "c.png").stat().st_size > 1000

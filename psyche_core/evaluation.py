"""Held-out loss during training: ``--eval-every N`` over ``--eval-holdout K`` (the last K
sequences of the training data, which the trainer then never trains on) or over a separate
data set (``--eval-data-path`` / ``--eval-data-url``, read by the same providers as training).

Every peer scores its contiguous slice of the held-out sequences without gradients, in eval
mode; peers add their summed loss and token counts (float64) in one collective, so the mean is
the same, to float rounding, however the run is laid out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from psyche_core.comm import Communicator
from psyche_core.data import IGNORE_INDEX, DataProvider, collate
from psyche_core.errors import PsycheError
from psyche_core.model import CausalLM


@dataclass(frozen=True)
class HeldOut:
    """What to score: ``ids`` of ``data``, ``micro_batch`` at a time (when: ``--eval-every``)."""

    data: DataProvider
    ids: range
    micro_batch: int
    from_training_data: bool = False  # the trainer must then never train on ``ids``

    @classmethod
    def holdout(cls, data: DataProvider, count: int, micro_batch: int) -> HeldOut:
        """The last ``count`` sequences of the training data."""
        n = data.num_sequences
        if count >= n:
            raise PsycheError(
                f"--eval-holdout {count} leaves nothing to train on: the data has {n} sequences"
            )
        return cls(data, range(n - count, n), micro_batch, from_training_data=True)

    @classmethod
    def separate(
        cls, data: DataProvider, batches: int | None, total_batch: int, micro_batch: int
    ) -> HeldOut:
        """The first ``batches * total_batch`` sequences of an evaluation data set (all of it
        when ``batches`` is None)."""
        n = (
            data.num_sequences
            if batches is None
            else min(data.num_sequences, batches * total_batch)
        )
        if n < 1:
            raise PsycheError(f"the evaluation data has no sequences ({data.describe()})")
        return cls(data, range(n), micro_batch)

    def peer_slice(self, rank: int, world_size: int) -> Sequence[int]:
        per_peer = math.ceil(len(self.ids) / world_size)
        return self.ids[rank * per_peer : (rank + 1) * per_peer]


def evaluate(
    model: CausalLM,
    held_out: HeldOut,
    comm: Communicator,
    device: torch.device,
    data_rank: int | None = None,
    data_ranks: int | None = None,
) -> dict[str, float]:
    """``{"val_loss", "val_ppl"}``: mean cross entropy over every labelled held-out token.

    ``comm`` reaches every rank; ``data_rank`` of ``data_ranks`` picks this rank's slice
    (default: the communicator's rank and size). Tensor-parallel ranks score the same slice,
    which weighs every token alike in the mean."""
    rank = comm.rank if data_rank is None else data_rank
    ranks = comm.world_size if data_ranks is None else data_ranks
    mine = held_out.peer_slice(rank, ranks)
    # Every rank runs the same number of forward passes (sharded models gather weights in each);
    # a rank whose slice is shorter scores its first batch again and counts nothing.
    longest = len(held_out.peer_slice(0, ranks))
    passes = -(-longest // held_out.micro_batch)
    totals = torch.zeros(2, dtype=torch.float64)  # (summed loss, labelled tokens)
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for index in range(passes):
                start = index * held_out.micro_batch
                ids = mine[start : start + held_out.micro_batch]
                counts = len(ids) > 0
                if not counts:
                    ids = held_out.ids[: held_out.micro_batch]
                batch = collate(held_out.data.get_samples(ids)).to(device)
                output = model(
                    batch.input_ids,
                    labels=batch.labels,
                    position_ids=batch.position_ids,
                    sequence_lengths=batch.sequence_lengths,
                    return_logits=False,
                )
                # the model's loss is the mean over positions whose next label is not ignored
                if not counts:
                    continue
                counted = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
                totals[0] += float(output.loss) * counted
                totals[1] += counted
    finally:
        model.train(training)
    with comm.uncounted():  # evaluation traffic is not the optimizer's exchange
        comm.all_reduce_mean_([totals])
    loss_sum, tokens = totals.tolist()  # means over peers; their ratio is the global mean
    if tokens == 0:
        raise PsycheError("the held-out data has no labelled tokens to score")
    loss = loss_sum / tokens
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0))}

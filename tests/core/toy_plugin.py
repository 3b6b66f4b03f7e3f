"""A tiny model and data provider, registered like a third-party plugin, for core tests.

The model is a real causal LM (embedding, a causal previous-token mix, a head), small enough
that a trainer test runs in milliseconds; the data is a deterministic next-token pattern it can
learn.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from psyche_core import DataProviderSpec, ModelSpec, OptimizerSpec, OptionSpec, hookimpl
from psyche_core.data import DataProvider, TokenizedData
from psyche_core.errors import PsycheError
from psyche_core.model import CausalLM, CausalLMOutput, ModelConfig
from psyche_core.optim import Optimizer


@dataclasses.dataclass(kw_only=True)
class ToyConfig(ModelConfig):
    model_type = "toy"
    architectures = ("ToyForCausalLM",)

    vocab_size: int = 32
    hidden_size: int = 16
    max_position_embeddings: int = 256
    initializer_range: float = 0.02


class ToyForCausalLM(CausalLM):
    config_class = ToyConfig

    def __init__(self, config: ToyConfig, options=None) -> None:
        super().__init__(config, options)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(
        self,
        input_ids,
        labels=None,
        position_ids=None,
        sequence_lengths=None,
        num_logits_to_keep=None,
        return_logits=True,
    ):
        h = self.embed_tokens(input_ids)  # (B, T, H)
        previous = F.pad(h, (0, 0, 1, 0))[:, :-1]  # token t sees token t-1
        if sequence_lengths is not None:
            keep = torch.ones(input_ids.shape, dtype=h.dtype)
            for row, lengths in enumerate(sequence_lengths):
                starts = np.cumsum([0, *lengths[:-1]])
                keep[row, starts] = 0.0  # a document's first token sees nothing before it
            previous = previous * keep.unsqueeze(-1)
        h = torch.tanh(self.mix(torch.cat([h, previous], dim=-1)))
        logits = self.lm_head(h)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)).float(),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        if num_logits_to_keep:
            logits = logits[:, -num_logits_to_keep:]
        return CausalLMOutput(logits, loss)


class PatternData(DataProvider):
    """Sequence i is ``(i + 3 t) mod vocab``: each token predicts the next."""

    def __init__(self, sequence_length: int, vocab: int = 32, n: int = 64) -> None:
        self.sequence_length = sequence_length
        self.vocab = vocab
        self.n = n
        self.requests: list[list[int]] = []

    @property
    def num_sequences(self) -> int:
        return self.n

    def get_samples(self, ids):
        ids = list(ids)
        self.requests.append(ids)
        out = []
        for i in ids:
            if not 0 <= i < self.n:
                raise PsycheError(f"sample {i} out of range")
            tokens = (i + 3 * np.arange(self.sequence_length)) % self.vocab
            out.append(TokenizedData(input_ids=tokens.astype(np.int64)))
        return out


def build_data(options, providers=None):
    return PatternData(options.sequence_length)


class FailingData(PatternData):
    """PatternData whose source fails at sample ``fail_at``: a dead data server (an error), or a
    dead peer (``how="die"``: the process exits at once, as a killed machine would)."""

    def __init__(self, sequence_length: int, fail_at: int, how: str) -> None:
        super().__init__(sequence_length)
        self.fail_at = fail_at
        self.how = how

    def get_samples(self, ids):
        ids = list(ids)
        if self.fail_at in ids:
            if self.how == "die":
                os._exit(9)
            raise PsycheError("data server http://127.0.0.1:9/ stopped answering")
        return super().get_samples(ids)


def build_failing_data(options, providers=None):
    return FailingData(options.sequence_length, options.toy_fail_at, options.toy_fail_how)


@hookimpl
def register_models(register):
    register(
        ModelSpec(
            name="toy",
            cls="tests.core.toy_plugin:ToyForCausalLM",
            model_types=("toy",),
            architectures=("ToyForCausalLM",),
            presets={"tiny": {"vocab_size": 32, "hidden_size": 16}},
        )
    )


@hookimpl
def register_data_providers(register):
    register(DataProviderSpec(name="toy", factory="tests.core.toy_plugin:build_data"))
    register(
        DataProviderSpec(
            name="toy-failing",
            factory="tests.core.toy_plugin:build_failing_data",
            options=(
                OptionSpec("toy-fail-at", int, 40, "Sample index whose fetch fails."),
                OptionSpec("toy-fail-how", ("error", "die"), "error", "How the fetch fails."),
            ),
        )
    )


class ToySGD(Optimizer):
    """Plain SGD that declares nothing about sharded parameters (the default)."""

    def step(self, ctx):
        with torch.no_grad():
            for p in self.params:
                if p.grad is not None:
                    p -= ctx.lr * p.grad
        return {}


def build_sgd(model, options):
    return ToySGD(model.named_parameters())


@hookimpl
def register_optimizers(register):
    register(OptimizerSpec(name="toy-sgd", factory="tests.core.toy_plugin:build_sgd"))

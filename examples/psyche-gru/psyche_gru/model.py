"""A GRU causal language model: embedding, stacked GRU, RMSNorm, output head.

Packed documents (``sequence_lengths``) are run as separate sequences, so the recurrent state
never carries across a document boundary.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from psyche_core.errors import InvalidInputError
from psyche_core.model import CausalLM, CausalLMOutput, ModelConfig


@dataclasses.dataclass(kw_only=True)
class GruConfig(ModelConfig):
    model_type = "psyche_gru"
    architectures = ("GruForCausalLM",)

    vocab_size: int = 512
    hidden_size: int = 128
    num_hidden_layers: int = 1
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    max_position_embeddings: int = 1 << 20  # a recurrence has no positional limit
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2


class GruForCausalLM(CausalLM):
    config_class = GruConfig
    attn_implementations = ("none",)  # no attention; the trainer's choice does not apply

    def __init__(self, config: GruConfig, options=None) -> None:
        super().__init__(config, options)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.gru = nn.GRU(
            config.hidden_size, config.hidden_size, config.num_hidden_layers, batch_first=True
        )
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def set_attn_implementation(self, name: str) -> None:
        pass  # nothing to choose for a recurrent model

    def init_weights(self, generator: torch.Generator) -> None:
        super().init_weights(generator)
        std = self.config.initializer_range
        for name, weight in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.normal_(weight, std=std * 10, generator=generator)
            else:
                nn.init.zeros_(weight)

    def forward(
        self,
        input_ids,
        labels=None,
        position_ids=None,
        sequence_lengths=None,
        num_logits_to_keep=None,
        return_logits=True,
    ):
        if input_ids.numel() and int(input_ids.max()) >= self.config.vocab_size:
            raise InvalidInputError(
                f"token id {int(input_ids.max())} is outside the vocabulary "
                f"({self.config.vocab_size} tokens)"
            )
        h = self.embed_tokens(input_ids)  # (B, T, H)
        if sequence_lengths is None:
            h, _ = self.gru(h)
        else:
            h = self._run_documents(h, sequence_lengths)
        logits = self.lm_head(self.norm(h))  # (B, T, vocab)
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

    def _run_documents(self, h: torch.Tensor, sequence_lengths) -> torch.Tensor:
        """Split rows into documents, run them as one packed batch, put them back."""
        pieces = [
            piece
            for row, lengths in enumerate(sequence_lengths)
            for piece in torch.split(h[row], [int(n) for n in lengths])
        ]
        lengths = torch.tensor([p.shape[0] for p in pieces])
        padded = nn.utils.rnn.pad_sequence(pieces, batch_first=True)  # (docs, longest, H)
        packed = pack_padded_sequence(padded, lengths, batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True)
        documents = [out[i, :n] for i, n in enumerate(lengths.tolist())]
        rows, start = [], 0
        for row_lengths in sequence_lengths:
            rows.append(torch.cat(documents[start : start + len(row_lengths)]))
            start += len(row_lengths)
        return torch.stack(rows)

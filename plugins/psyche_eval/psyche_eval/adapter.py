"""An lm-eval model backed by a psyche :class:`~psyche_core.model.CausalLM`.

lm-eval asks a model three things: the log-likelihood of a continuation after a context (and
whether greedy decoding would have produced it), the rolling log-likelihood of a whole text, and
a generation up to a stop string. :class:`PsycheLM` answers them with nothing but the CausalLM
contract, ``model(input_ids) -> (logits, loss)``, so every registered model works, including
third-party architectures that transformers does not know.

The numbers follow lm-eval's own ``hf`` backend (HFLM), so that a checkpoint scores the same
through either: the same tokenisation (lm-eval's ``TemplateLM``), left truncation to the
model's context, right-padded batches, log-softmax in float32, and the same rolling windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    Collator,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from psyche_core.generation import next_token_distribution
from psyche_core.model import CausalLM

# (request strings, context token ids, continuation token ids), as TemplateLM builds them.
TokenRequest = tuple[tuple[str, str] | None, list[int], list[int]]


class PsycheLM(TemplateLM):
    """lm-eval's view of a psyche model plus the tokenizer that turns task text into its ids.

    Args:
        model: any CausalLM; it is put in eval mode for each call and restored afterwards.
        tokenizer: a transformers tokenizer (``PreTrainedTokenizerBase``) over the model's ids.
        batch_size: requests per forward pass for the log-likelihood requests.
        max_length: the context to use; defaults to ``model.max_context_length``.
        max_gen_toks: new tokens per generation unless the task says otherwise.
        seed: seeds sampling when a task asks for ``do_sample``.
    """

    backend = "causal"

    def __init__(
        self,
        model: CausalLM,
        tokenizer: Any,
        batch_size: int = 1,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self._max_length = int(max_length or model.max_context_length)
        self._max_gen_toks = int(max_gen_toks)
        self._seed = seed
        self._device = next(model.parameters()).device

    # -- facts lm-eval reads ---------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        if self.tokenizer.eos_token_id is not None:
            return int(self.tokenizer.eos_token_id)
        return self.model.eos_token_ids[0]

    @property
    def prefix_token_id(self) -> int:
        # What an empty context (and the first rolling window) conditions on: BOS, else EOS.
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eot_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "name_or_path", "") or "").replace("/", "__")

    def get_model_info(self) -> dict[str, Any]:
        """Recorded under ``config`` in lm-eval's results."""
        model = self.model
        return {
            "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
            "model_num_parameters": sum(p.numel() for p in model.parameters()),
            "model_dtype": str(next(model.parameters()).dtype),
            "max_length": self.max_length,
        }

    # -- tokenisation ----------------------------------------------------------------------------

    def tok_encode(
        self,
        string: str,
        add_special_tokens: bool | None = None,
        left_truncate_len: int | None = None,
        **kwargs: Any,
    ) -> list[int]:
        options: dict[str, bool] = {}
        if add_special_tokens is not None:
            options["add_special_tokens"] = add_special_tokens
        elif has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            # The text already starts with BOS (a few-shot prompt may): do not add a second.
            options["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **options)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # -- the three request types -----------------------------------------------------------------

    def _loglikelihood_tokens(
        self, requests: list[TokenRequest], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation), continuation is the greedy choice)`` per request.

        Requests are sorted longest first and batched; one-token continuations of one context
        (multiple choice) share a forward pass through lm-eval's Collator cache.
        """
        collator = Collator(
            requests,
            sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])),
            group_by="contexts",
            group_fn=lambda r: r[1] + r[2][:-1],
        )
        answers: list[tuple[float, bool]] = []
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="psyche loglikelihood")
        with _inference(self.model):
            for chunk in collator.get_batched(n=self.batch_size):
                for request, cont_logprobs in zip(chunk, self._score_batch(chunk), strict=True):
                    strings, context, continuation = request
                    for key, cont, logprobs in collator.get_cache(
                        req_str=strings,
                        cxt_toks=context,
                        cont_toks=continuation,
                        logits=cont_logprobs.unsqueeze(0),
                    ):
                        target = torch.tensor(cont, device=logprobs.device).unsqueeze(0)
                        # A shorter continuation sharing this context scores the trailing rows.
                        rows = logprobs[:, -target.shape[1] :]
                        greedy = bool((rows.argmax(dim=-1) == target).all())
                        total = float(rows.gather(2, target.unsqueeze(-1)).sum())
                        answers.append((total, greedy))
                        if key is not None:
                            self.cache_hook.add_partial("loglikelihood", key, (total, greedy))
                        progress.update(1)
        progress.close()
        return collator.get_original(answers)

    def _score_batch(self, chunk: Sequence[TokenRequest]) -> list[torch.Tensor]:
        """Per request, the ``(len(continuation), vocab)`` log-probabilities that predict it."""
        rows = []
        for _, context, continuation in chunk:
            if not context or not continuation:
                raise ValueError("lm-eval sent an empty context or continuation")
            # The last token is only predicted; left-truncate to the model's context.
            rows.append((context + continuation)[-(self.max_length + 1) :][:-1])
        width = max(len(row) for row in rows)
        # Right padding: with causal attention it cannot change the positions that are scored.
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        starts = [len(row) - len(cont) for row, (_, _, cont) in zip(rows, chunk, strict=True)]
        keep = width - min(starts)  # logits only for positions some continuation needs
        logits = self.model(ids, num_logits_to_keep=keep)[0]
        logprobs = F.log_softmax(logits.float(), dim=-1)  # (B, keep, vocab)
        offset = width - keep
        return [
            logprobs[i, start - offset : len(row) - offset]
            for i, (row, start) in enumerate(zip(rows, starts, strict=True))
        ]

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of each whole text, scored in disjoint windows of the model's context
        (the first conditioned on the prefix token), as lm-eval's perplexity tasks define it."""
        windows: list[TokenRequest] = []
        owners: list[int] = []
        for index, (text,) in enumerate(request.args for request in requests):
            for context, continuation in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        for owner, (logprob, _) in zip(owners, scores, strict=True):
            totals[owner] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or, with ``do_sample``, sampled) continuations cut at the first stop string.

        Requests run one at a time and every step re-runs the model on the whole sequence: the
        CausalLM contract has no KV cache or attention mask. Exact, and fast enough for the small
        models psyche trains.
        """
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        outputs = []
        generator = torch.Generator(device="cpu").manual_seed(self._seed)
        with _inference(self.model):
            for context, gen_kwargs in tqdm(
                [request.args for request in requests], disable=disable_tqdm, desc="psyche generate"
            ):
                options = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
                stops = handle_stop_sequences(options.pop("until", None), eos=eos_text)
                max_new = int(options.pop("max_gen_toks"))
                if max_new >= self.max_length:
                    raise ValueError(
                        f"max_gen_toks {max_new} leaves no room for a context in the model's "
                        f"{self.max_length} positions"
                    )
                prompt = self.tok_encode(context, left_truncate_len=self.max_length - max_new)
                temperature = float(options.get("temperature") or 0.0)
                if not options.get("do_sample"):
                    temperature = 0.0
                new = self._generate(
                    prompt,
                    max_new,
                    stops,
                    temperature,
                    options.get("top_k"),
                    options.get("top_p"),
                    generator,
                )
                text = postprocess_generated_text(self.tok_decode(new), stops, None)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
                outputs.append(text)
        return outputs

    def _generate(
        self,
        prompt: list[int],
        max_new: int,
        stops: list[str],
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        generator: torch.Generator,
    ) -> list[int]:
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        new: list[int] = []
        for _ in range(max_new):
            logits = self.model(ids, num_logits_to_keep=1)[0][0, -1]
            if temperature == 0.0:
                token = int(torch.argmax(logits))
            else:
                probs = next_token_distribution(logits.cpu(), temperature, top_k, top_p)
                token = int(torch.multinomial(probs, 1, generator=generator))
            new.append(token)
            if token == self.eot_token_id:
                break
            text = self.tok_decode(new)
            if any(stop and stop in text for stop in stops):
                break
            ids = torch.cat([ids, torch.tensor([[token]], device=self.device)], dim=1)
        return new


class _inference:
    """``torch.inference_mode`` with the model in eval mode, restoring its training flag (a
    trainer may evaluate between steps)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.mode = torch.inference_mode()

    def __enter__(self) -> None:
        self.was_training = self.model.training
        self.model.eval()
        self.mode.__enter__()

    def __exit__(self, *exc: object) -> None:
        self.mode.__exit__(*exc)
        self.model.train(self.was_training)

"""Offline lm-eval fixtures: tiny tasks over local jsonl, a word-level tokenizer trained on their
text, and tiny checkpoints that both psyche and ``lm_eval --model hf`` load."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
COLORS = ["red", "green", "blue", "yellow"]


def color_docs(count: int = 24, seed: int = 0) -> list[dict[str, Any]]:
    """``item N is`` -> one of four colours, a fixed random answer per item."""
    rng = random.Random(seed)
    return [
        {"question": f"item q{i} is", "choices": COLORS, "answer": rng.randrange(len(COLORS))}
        for i in range(count)
    ]


def prose_docs(count: int = 4, words: int = 40, seed: int = 0) -> list[dict[str, Any]]:
    """Texts for a rolling log-likelihood task, longer than a tiny model's context."""
    rng = random.Random(seed)
    vocab = [*COLORS, "item", "is", "the", "a", "of", "and"]
    return [{"text": " ".join(rng.choice(vocab) for _ in range(words))} for _ in range(count)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_tasks(directory: Path, n_colors: int = 24) -> Path:
    """Three local tasks, one per lm-eval request type, in ``directory`` (an --include-path)."""
    directory.mkdir(parents=True, exist_ok=True)
    colors = write_jsonl(directory / "colors.jsonl", color_docs(n_colors))
    prose = write_jsonl(directory / "prose.jsonl", prose_docs())
    tasks = {
        "psyche_colors": {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(colors)}},
            "test_split": "test",
            "fewshot_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "{{question}}",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "{{answer}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        },
        "psyche_prose": {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(prose)}},
            "test_split": "test",
            "output_type": "loglikelihood_rolling",
            "num_fewshot": 0,  # whole texts: lm-eval then ignores a --num-fewshot
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "metric_list": [
                {
                    "metric": "word_perplexity",
                    "aggregation": "weighted_perplexity",
                    "higher_is_better": False,
                }
            ],
        },
        "psyche_colors_gen": {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(colors)}},
            "test_split": "test",
            "fewshot_split": "test",
            "output_type": "generate_until",
            "doc_to_text": "{{question}}",
            "doc_to_target": "{{choices[answer]}}",
            "generation_kwargs": {"until": ["."], "max_gen_toks": 4, "do_sample": False},
            "metric_list": [
                {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
            ],
        },
    }
    for name, config in tasks.items():
        # JSON is valid YAML; no yaml writer needed.
        (directory / f"{name}.yaml").write_text(json.dumps({"task": name, **config}, indent=1))
    return directory


def train_tokenizer(directory: Path) -> Any:
    """A word-level tokenizer over the tasks' words, saved as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    words = [d["question"] for d in color_docs()] + [d["text"] for d in prose_docs()] + COLORS
    tok.train_from_iterator(words, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.save_pretrained(directory)
    return fast


def llama_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    config = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 112,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 24,  # short, so rolling windows and truncation happen
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return config


def llama_checkpoint(directory: Path, seed: int = 0, **overrides: Any) -> Path:
    """A random tiny Llama (psyche's init) saved with the tokenizer: one directory that psyche
    and transformers both load."""
    import torch

    from psyche_llama.model import LlamaForCausalLM

    vocab_size = len(train_tokenizer(directory))
    model = LlamaForCausalLM.from_config(llama_config(vocab_size, **overrides), seed=seed)
    # Init-scale weights give nearly uniform predictions; larger ones make every weight matter.
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if name.endswith("norm.weight") else 0.15 * noise)
    model.save_pretrained(directory)  # replaces the directory: the tokenizer goes in after
    train_tokenizer(directory)
    return directory


def deepseek_checkpoint(directory: Path, seed: int = 0) -> Path:
    """A random tiny DeepSeek-V3 (MLA + MoE) built and saved by transformers, with the tokenizer."""
    from tests.deepseek.helpers import build_hf

    tokenizer = train_tokenizer(directory.parent / f"{directory.name}-tokenizer")
    model = build_hf(
        "deepseek_v3",
        seed=seed,
        vocab_size=len(tokenizer),
        max_position_embeddings=24,
        bos_token_id=1,
        eos_token_id=2,
        n_group=4,
        topk_group=2,
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory

"""Is it any good? ``psyche eval`` on ``llama:20m`` before and after a short run on the fineweb
fixture, with lm-eval's own ``hf`` backend on the same checkpoint as the reference.

The data is tiny (the fineweb fixture is 6,144 tokens; the dolma fixture, never trained on,
is the held-out text), so the numbers show the machinery working, not a useful model:

    python benchmarks/eval_fineweb.py --steps 60 --rounds 2 --save

Runs in one process: ``psyche train`` (the CLI), then per round psyche's adapter
(``psyche_eval.harness.evaluate``) and ``lm_eval.simple_evaluate(model="hf")`` alternately on the
trained checkpoint (medians of the rounds), then ``psyche eval`` (the CLI) on the trained
checkpoint and on the untrained preset. Prints one JSON object; with ``--save``, also writes
``benchmarks/results/eval_fineweb.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _record

FIXTURES = Path(
    os.environ.get("PSYCHE_FIXTURES", Path(__file__).parents[2] / "shared/fixtures/psyche")
)
METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def write_tasks(directory: Path) -> dict[str, str]:
    """Rolling log-likelihood tasks over the fixtures' decoded text, one line per document."""
    directory.mkdir(parents=True, exist_ok=True)
    sources = {
        "fineweb_seen": sorted((FIXTURES / "fineweb" / "decoded").glob("*.txt")),
        "dolma_unseen": sorted((FIXTURES / "dolma" / "decoded").glob("*.txt")),
    }
    for task, files in sources.items():
        lines = [line for f in files for line in f.read_text().splitlines() if line.strip()]
        data = directory / f"{task}.jsonl"
        data.write_text("".join(json.dumps({"text": line}) + "\n" for line in lines))
        config = {
            "task": task,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data)}},
            "test_split": "test",
            "output_type": "loglikelihood_rolling",
            "doc_to_text": "",
            "doc_to_target": "{{text}}",
            "num_fewshot": 0,
            "metric_list": [
                {
                    "metric": "word_perplexity",
                    "aggregation": "weighted_perplexity",
                    "higher_is_better": False,
                },
                {
                    "metric": "byte_perplexity",
                    "aggregation": "weighted_perplexity",
                    "higher_is_better": False,
                },
                {
                    "metric": "bits_per_byte",
                    "aggregation": "bits_per_byte",
                    "higher_is_better": False,
                },
            ],
        }
        (directory / f"{task}.yaml").write_text(json.dumps(config, indent=1))
    return {task: str(files[0].parent) for task, files in sources.items()}


def psyche(*args: str) -> None:
    from psyche_core.cli import main

    main(list(args))


def psyche_evaluate(checkpoint: Path, tokenizer: Path, tasks: list[str], manager) -> dict:
    from psyche_eval.harness import evaluate
    from psyche_eval.tokenizer import load_tokenizer

    from psyche_core.plugins import Plugins
    from psyche_core.resolve import resolve_model

    model = resolve_model(Plugins.load(), str(checkpoint)).build(0)
    encoder = load_tokenizer(tokenizer, model)
    return evaluate(model, encoder, tasks, batch_size=8, log_samples=True, task_manager=manager)


def metrics(results: dict, task: str) -> dict[str, float]:
    return {m: round(results["results"][task][f"{m},none"], 4) for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    _record.add_save_flag(parser)
    args = parser.parse_args()
    tokenizer_json = FIXTURES / "llama2_tokenizer.json"
    if not tokenizer_json.is_file():
        sys.exit(f"fixtures not found at {FIXTURES} (set PSYCHE_FIXTURES)")

    import lm_eval
    import transformers
    from lm_eval.tasks import TaskManager

    work = Path(tempfile.mkdtemp(prefix="psyche-eval-bench-"))
    sources = write_tasks(work / "tasks")
    train = [
        "train",
        "--model",
        "llama:20m",
        "--data-path",
        str(FIXTURES / "fineweb" / "data"),
        "--sequence-length",
        "256",
        "--total-batch",
        "4",
        "--micro-batch",
        "4",
        "--total-steps",
        str(args.steps),
        "--warmup-steps",
        "10",
        "--learning-rate",
        "1e-3",
        "--save-path",
        str(work / "run"),
        "--metrics",
        str(work / "metrics.jsonl"),
    ]
    started = time.perf_counter()
    psyche(*train)
    train_s = time.perf_counter() - started
    losses = [
        json.loads(line)["loss"] for line in (work / "metrics.jsonl").read_text().splitlines()
    ]
    checkpoint = work / "run"

    # lm-eval's hf backend loads the tokenizer from a directory: the same tokenizer.json, with
    # the BOS / EOS that Llama 2 uses.
    tokenizer_dir = work / "tokenizer"
    transformers.PreTrainedTokenizerFast(
        tokenizer_file=str(tokenizer_json), bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(tokenizer_dir)

    tasks = ",".join(sources)
    common = [
        "--tasks",
        tasks,
        "--include-path",
        str(work / "tasks"),
        "--tokenizer",
        str(tokenizer_dir),
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--log-samples",
    ]
    manager = TaskManager(include_path=str(work / "tasks"), include_defaults=False)
    timings: dict[str, list[float]] = {"psyche": [], "hf": []}
    for round_ in range(args.rounds):
        # Both sides load the checkpoint and tokenizer and share one task index, so the times
        # compare the model adapters (the CLI also indexes lm-eval's 14k built-in tasks).
        started = time.perf_counter()
        ours = psyche_evaluate(checkpoint, tokenizer_dir, list(sources), manager)
        timings["psyche"].append(time.perf_counter() - started)
        started = time.perf_counter()
        reference = lm_eval.simple_evaluate(
            model="hf",
            model_args=f"pretrained={checkpoint},tokenizer={tokenizer_dir},dtype=float32",
            tasks=list(sources),
            batch_size=8,
            device="cpu",
            task_manager=manager,
            log_samples=True,
        )
        timings["hf"].append(time.perf_counter() - started)
        print(
            f"round {round_ + 1}: psyche {timings['psyche'][-1]:.1f}s, hf {timings['hf'][-1]:.1f}s",
            file=sys.stderr,
        )
    psyche("eval", "--model", str(checkpoint), "--output", str(work / "trained.json"), *common)
    trained = json.loads((work / "trained.json").read_text())
    psyche("eval", "--model", "llama:20m", "--output", str(work / "untrained.json"), *common)
    untrained = json.loads((work / "untrained.json").read_text())

    cli_matches_library = all(
        metrics(ours, t) == metrics(trained, t) for t in sources
    )  # psyche eval (CLI) and psyche_eval.harness.evaluate on the same checkpoint
    # Per-document log-likelihoods, psyche's adapter vs lm-eval's hf backend.
    max_diff = max(
        abs(ours["resps"][0][0] - ref["resps"][0][0])
        for task in sources
        for ours, ref in zip(
            sorted(trained["samples"][task], key=lambda s: s["doc_id"]),
            sorted(reference["samples"][task], key=lambda s: s["doc_id"]),
            strict=True,
        )
    )
    rows = []
    for label, results in [
        ("llama:20m, random init", untrained),
        (f"llama:20m, {args.steps} steps on fineweb fixture", trained),
        ("same checkpoint, lm_eval --model hf", reference),
    ]:
        rows.append({"model": label, **{t: metrics(results, t) for t in sources}})
    report = {
        "train_command": "psyche " + " ".join(train),
        "eval_command": f"psyche eval --model RUN --tasks {tasks} --include-path TASKS "
        f"--tokenizer TOKENIZER --batch-size 8 --output results.json",
        "versions": {"transformers": transformers.__version__, "lm_eval": lm_eval.__version__},
        "note": "tiny: 6,144 training tokens (fineweb fixture), documents are the decoded "
        "fixture lines; dolma_unseen is text the model never trained on",
        "documents": {t: trained["n-samples"][t]["effective"] for t in sources},
        "train": {
            "steps": args.steps,
            "seconds": round(train_s, 1),
            "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
        },
        "rows": rows,
        "per_document_loglikelihood_max_abs_diff_vs_hf": float(max_diff),
        "cli_matches_library": cli_matches_library,
        "eval_seconds_median": {k: round(statistics.median(v), 2) for k, v in timings.items()},
        "eval_seconds_rounds": timings,
    }
    _record.emit(report, args.save, "eval_fineweb")


if __name__ == "__main__":
    main()

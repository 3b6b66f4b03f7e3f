"""``psyche eval``: lm-eval tasks on any psyche model (only click is imported at module level)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from psyche_core.errors import PsycheError
from psyche_core.plugins import Plugins


def make_eval_command() -> click.Command:
    @click.command("eval")
    @click.option(
        "--model",
        "model_ref",
        required=True,
        help="What to evaluate, resolved as psyche train resolves it: a checkpoint directory "
        "(e.g. SAVE_PATH or SAVE_PATH/step-000100), a hub repo id, a config.json or "
        "NAME[:PRESET] (random init).",
    )
    @click.option(
        "--tasks",
        required=True,
        help="Comma-separated lm-eval task, group or tag names (e.g. hellaswag,arc_easy), globs, "
        "or task YAML files.",
    )
    @click.option(
        "--tokenizer",
        help="The model's tokenizer: a tokenizer.json, a transformers tokenizer directory or a "
        "hub id. Default: the one saved in the checkpoint directory.",
    )
    @click.option(
        "--include-path",
        multiple=True,
        type=click.Path(),
        help="A folder of extra task YAMLs (e.g. tasks over local jsonl files); repeatable.",
    )
    @click.option(
        "--limit",
        type=float,
        help="Documents per task (a fraction of each task below 1); for quick checks only.",
    )
    @click.option("--num-fewshot", type=int, help="Few-shot examples; default: each task's own.")
    @click.option(
        "--batch-size", default=1, show_default=True, type=int, help="Requests per forward pass."
    )
    @click.option(
        "--max-length", type=int, help="Context positions to use; default: the model's maximum."
    )
    @click.option(
        "--output",
        type=click.Path(),
        help="Write lm-eval's results JSON here (with per-document samples if --log-samples).",
    )
    @click.option("--log-samples", is_flag=True, help="Keep per-document inputs and scores.")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda[:N], mps.")
    @click.option("--dtype", help="float32, bfloat16 or float16; default bf16 on CUDA, else fp32.")
    @click.option(
        "--seed",
        default=0,
        show_default=True,
        type=int,
        help="Init seed when --model names an untrained model (lm-eval keeps its own seeds).",
    )
    @click.pass_context
    def eval_command(
        ctx: click.Context,
        model_ref: str,
        tasks: str,
        tokenizer: str | None,
        include_path: tuple[str, ...],
        limit: float | None,
        num_fewshot: int | None,
        batch_size: int,
        max_length: int | None,
        output: str | None,
        log_samples: bool,
        device: str,
        dtype: str | None,
        seed: int,
    ) -> None:
        """Score a model on lm-evaluation-harness tasks (hellaswag, arc_easy, local YAMLs...).

        Task names, options and the results JSON are lm-eval's own; the model runs through a
        psyche adapter, so every registered model works, including plugin architectures that
        transformers does not know. Prints lm-eval's results table.
        """
        from psyche_eval.harness import require_lm_eval

        require_lm_eval()
        _check_numbers(limit, num_fewshot, batch_size, max_length)
        output_path = _check_output(output)
        names = [t.strip() for t in tasks.split(",") if t.strip()]

        from psyche_core.options import Options, all_option_specs
        from psyche_core.resolve import resolve_device, resolve_dtype, resolve_model
        from psyche_eval.harness import evaluate, load_tasks, make_task_manager
        from psyche_eval.tokenizer import find_tokenizer, load_tokenizer

        # Everything a user can get wrong is checked before the model is built: the model
        # reference, the tokenizer, the task names and their datasets.
        plugins = ctx.find_object(Plugins) or Plugins.load()
        # built exactly as `psyche train` builds it, with every option at its default
        options = Options.defaults(all_option_specs(plugins), model=model_ref, device=device)
        choice = resolve_model(plugins, model_ref, options)
        tokenizer_ref = tokenizer or find_tokenizer(choice.checkpoint, Path(model_ref))
        if tokenizer_ref is None:
            raise PsycheError(
                f"--model {model_ref} has no saved tokenizer; pass --tokenizer (a tokenizer.json "
                "or a tokenizer directory) so that task text can become token ids"
            )
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        manager = make_task_manager(include_path)
        loaded = load_tasks(manager, names)

        model = choice.build(seed, device=torch_device, dtype=torch_dtype, options=options)
        encoder = load_tokenizer(tokenizer_ref, model)
        if max_length is not None and max_length > model.max_context_length:
            raise PsycheError(
                f"--max-length {max_length} exceeds the model's {model.max_context_length} "
                "positions"
            )
        click.echo(f"psyche eval  {choice.label} on {', '.join(names)}", err=True)
        results = evaluate(
            model,
            encoder,
            loaded,
            limit=int(limit) if limit is not None and limit >= 1 else limit,
            num_fewshot=num_fewshot,
            batch_size=batch_size,
            log_samples=log_samples,
            max_length=max_length,
            task_manager=manager,
        )
        results["config"]["model"] = "psyche"
        results["config"]["model_args"] = {
            "model": model_ref,
            "resolved": choice.label,
            "tokenizer": str(tokenizer_ref),
            "device": str(torch_device),
        }
        from lm_eval.utils import handle_non_serializable, make_table

        click.echo(make_table(results))
        if results.get("groups"):
            click.echo(make_table(results, "groups"))
        if output_path is not None:
            output_path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(
                results, indent=2, default=handle_non_serializable, ensure_ascii=False
            )
            output_path.write_text(text + "\n")
            click.echo(f"results written to {output_path}", err=True)

    return eval_command


def _check_numbers(
    limit: float | None, num_fewshot: int | None, batch_size: int, max_length: int | None
) -> None:
    rules = [
        ("--limit", limit is None or limit > 0, "must be positive"),
        ("--num-fewshot", num_fewshot is None or num_fewshot >= 0, "must be >= 0"),
        ("--batch-size", batch_size >= 1, "must be at least 1"),
        ("--max-length", max_length is None or max_length >= 2, "must be at least 2"),
    ]
    for flag, ok, rule in rules:
        if not ok:
            raise PsycheError(f"{flag} {rule}")


def _check_output(output: str | None) -> Path | None:
    if output is None:
        return None
    path = Path(output).expanduser()
    if path.is_dir():
        raise PsycheError(f"--output {output} is a directory; give a file name like results.json")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise PsycheError(f"--output {output}: its folder cannot be created")
    return path

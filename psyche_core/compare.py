"""``psyche compare``: the same model, data, seed and token budget under several optimizer
settings, each at its best learning rate, in one report.

A setting is an optimizer name with optional ``key=value`` overrides of that optimizer's own
flags, named by the flag or its last word (``distro:topk=32,chunk=16,decay=0.995`` sets
``--compression-topk``, ``--compression-chunk``, ``--compression-decay``; a bare key is a
switch: ``distro:quantization``). Each setting trains once per ``--lr-sweep`` value; the best
run is the one with the lowest held-out loss when there is held-out data, else the lowest mean
training loss over the last steps. The report folder holds ``report.md`` (the table),
``curves.png`` (loss against tokens and against bytes sent) and every run's metrics JSONL;
``compare.json`` records what is finished, so an interrupted compare resumes where it stopped.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psyche_core.errors import PsycheError, UnknownNameError
from psyche_core.options import Options, apply_presets, coerce
from psyche_core.plugins import Plugins
from psyche_core.specs import OptionSpec

STATE_FILE = "compare.json"
KIND = "psyche-compare"
# train options a compare sets itself per run, or that would make runs write over each other
PER_RUN = frozenset(
    {
        "optimizer",
        "learning_rate",
        "metrics",
        "save_path",
        "resume",
        "start_step",
        "checkpoint_every",
        "keep_last",
        "tensorboard",
        "wandb_project",
        "wandb_name",
    }
)


@dataclass(frozen=True)
class Setting:
    """One optimizer configuration: ``text`` as typed, the optimizer and its option values."""

    text: str
    optimizer: str
    overrides: tuple[tuple[str, Any], ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.text.replace(":", "-").replace(",", "_"))


def parse_setting(text: str, plugins: Plugins, specs: Sequence[OptionSpec]) -> Setting:
    """``NAME`` or ``NAME:key=value,key,...`` against the optimizer's declared options (and
    the core optimizer options: betas, eps, weight decay)."""
    name, _, rest = text.partition(":")
    spec = plugins.optimizers.get(name)  # unknown names: one line with close matches
    own = {option.key: option for option in spec.options}
    core = {s.key: s for s in specs if s.key in ("beta1", "beta2", "eps", "weight_decay")}
    overrides = []
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, has_value, raw = item.partition("=")
        option = _match_option(key.strip().replace("-", "_"), own, core, name, text)
        if not has_value:
            if option.type is not bool:
                raise PsycheError(f"{text}: {key} needs a value ({key}=...)")
            value: Any = True
        else:
            value = _parse_value(option, raw.strip(), text)
        overrides.append((option.key, value))
    # a preset (distro:preset=small) fills in what the setting does not set itself
    values = apply_presets(specs, dict(overrides), dict(overrides))
    return Setting(text, name, tuple(values.items()))


def _match_option(
    key: str, own: dict[str, OptionSpec], core: dict[str, OptionSpec], name: str, text: str
) -> OptionSpec:
    """The option ``key`` names: its key, or the last words of its key (``decay`` is
    ``compression_decay``); the optimizer's own options before the core ones (``weight_decay``)."""
    choices = {**core, **own}
    if key in choices:
        return choices[key]
    for group in (own, core):
        by_suffix = [option for k, option in group.items() if k.endswith("_" + key)]
        if len(by_suffix) == 1:
            return by_suffix[0]
        if by_suffix:
            names = ", ".join(option.key for option in by_suffix)
            raise PsycheError(f"{text}: {key!r} could be any of {names}; use the full name")
    known = sorted({k.split("_")[-1] for k in choices} | set(choices))
    raise UnknownNameError(
        f"{name} key", key, known, f"(in {text!r}: keys are the optimizer's own flags)"
    )


def _parse_value(option: OptionSpec, raw: str, text: str) -> Any:
    kind = option.type
    try:
        if kind is bool:
            value: Any = {"true": True, "false": False, "1": True, "0": False}[raw.lower()]
        elif kind is int:
            value = int(raw)
        elif kind is float:
            value = float(raw)
        else:
            value = raw
    except (KeyError, ValueError):
        value = raw  # coerce names the expected type
    return coerce(option, value, text)


def parse_learning_rates(text: str | None) -> list[float]:
    """``3e-4,1e-3,3e-3`` -> floats, each finite and positive."""
    if not text:
        return []
    rates = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise PsycheError(f"--lr-sweep {text}: {part!r} is not a number") from None
        if not (math.isfinite(rate) and rate > 0):
            raise PsycheError(f"--lr-sweep {text}: every learning rate must be positive")
        rates.append(rate)
    return rates


# -- the report folder ---------------------------------------------------------------------------


def run_defining_options(options: Options) -> dict[str, Any]:
    """The options every run of a compare shares (model, data, budget, seed, ...), as JSON
    values: what a resumed compare must match so that old and new runs stay comparable."""
    values = {key: value for key, value in options.items() if key not in PER_RUN}
    return json.loads(json.dumps(values, sort_keys=True, default=str))


def open_report(
    out: Path,
    settings: Sequence[Setting],
    rates: Sequence[float],
    resume: bool,
    options: Options,
):
    """The state of ``out``: new, or a compare to continue. A continued compare may name more
    settings or rates than before (a study grows: a coarse grid first, then a finer lr sweep
    of the best settings); its other options must be the ones its runs were trained with."""
    state_file = out / STATE_FILE
    texts = [s.text for s in settings]
    shared = run_defining_options(options)
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        if not resume:
            raise PsycheError(
                f"{out} holds a compare report already; pass --resume to continue it, or "
                "choose another --out"
            )
        if state.get("kind") != KIND:
            raise PsycheError(f"{out / STATE_FILE} is not a psyche compare record")
        saved = state.get("options")
        if saved is not None and saved != shared:  # (records before 2026-12 have none)
            changed = sorted(
                k for k in saved.keys() | shared.keys() if saved.get(k) != shared.get(k)
            )
            shown = ", ".join(f"{k} {saved.get(k)!r} -> {shared.get(k)!r}" for k in changed[:4]) + (
                " ..." if len(changed) > 4 else ""
            )
            raise PsycheError(
                f"{out} holds a compare trained with other options ({shown}); --resume "
                "continues only with the same train options (settings and rates may grow)"
            )
        state["settings"] += [t for t in texts if t not in state["settings"]]
        state["learning_rates"] += [r for r in rates if r not in state["learning_rates"]]
        state["options"] = shared
        return state
    if out.exists() and (out.is_file() or any(out.iterdir())):
        raise PsycheError(
            f"--out {out} is not empty and holds no psyche compare; choose an empty or new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    return {
        "kind": KIND,
        "settings": texts,
        "learning_rates": list(rates),
        "options": shared,
        "runs": {},
    }


def _invocation() -> dict[str, Any]:
    """Where the runs of one call came from (a compare's figures get quoted)."""
    import torch

    return {
        "command": shlex.join(["psyche", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def save_state(out: Path, state: dict[str, Any]) -> None:
    temporary = out / (STATE_FILE + ".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(out / STATE_FILE)


def run_compare(
    options: Options,
    settings: Sequence[Setting],
    rates: Sequence[float],
    out: Path,
    plugins: Plugins,
    resume: bool,
    train: Callable[[Options], dict[str, Any]],
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every setting at every rate (skipping finished runs), then write the report of
    every setting the compare holds (those of earlier calls too)."""
    state = open_report(out, settings, rates, resume, options)
    state.setdefault("recorded", []).append(_invocation())
    save_state(out, state)
    (out / "runs").mkdir(exist_ok=True)
    switches = {spec.implied_by for _, spec, _ in plugins.optimizers.items() if spec.implied_by}
    for setting in settings:
        for rate in rates or [options.learning_rate]:
            name = f"{setting.slug}@{rate:g}"
            if name in state["runs"]:
                say(f"compare: {name} done already")
                continue
            say(f"compare: training {name}")
            metrics = out / "runs" / f"{name}.jsonl"
            run_options = options.replace(
                **{key: False for key in switches if key in options},
                optimizer=setting.optimizer,
                learning_rate=rate,
                metrics=str(metrics),
                **dict(setting.overrides),
            )
            summary = train(run_options)
            if summary.get("stopped"):
                raise PsycheError(f"compare stopped during {name}; --resume continues it")
            state["runs"][name] = {
                "setting": setting.text,
                "learning_rate": rate,
                "metrics": str(metrics.relative_to(out)),
                "parameters": summary.get("parameters"),
            }
            save_state(out, state)
    rows = summarize(out, state, state["settings"])
    write_report(out, rows, options)
    return rows


# -- summarizing -----------------------------------------------------------------------------------


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_scores(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tail = max(1, min(20, len(rows) // 5))
    held_out = [r["val_loss"] for r in rows if r.get("val_loss") is not None]
    return {
        "loss": statistics.fmean(r["loss"] for r in rows[-tail:]),
        "val_loss": held_out[-1] if held_out else None,
        "bytes_per_step": statistics.fmean(r["bytes_sent"] for r in rows),
        "step_time_s": statistics.median(r["step_time_s"] for r in rows),
        "optimizer_s": statistics.median(r.get("optimizer_s", math.nan) for r in rows),
        "tail": tail,
    }


def summarize(out: Path, state: dict[str, Any], settings: Sequence[str]) -> list[dict]:
    """The best run of each setting (held-out loss when there is one, else training loss)."""
    best = []
    for setting in settings:
        candidates = []
        for run in state["runs"].values():
            if run["setting"] != setting:
                continue
            scores = run_scores(_read(out / run["metrics"]))
            key = scores["val_loss"] if scores["val_loss"] is not None else scores["loss"]
            candidates.append((key, run, scores))
        if not candidates:
            continue  # named but not trained yet
        key, run, scores = min(candidates, key=lambda c: c[0])
        dense = 4 * run["parameters"] if run.get("parameters") else None
        best.append(
            {
                "setting": setting,
                "learning_rate": run["learning_rate"],
                "metrics": run["metrics"],
                "compression": dense / scores["bytes_per_step"]
                if dense and scores["bytes_per_step"]
                else None,
                "tried": sorted(c[1]["learning_rate"] for c in candidates),
                **scores,
            }
        )
    return best


def write_report(out: Path, rows: list[dict[str, Any]], options: Options) -> None:
    by = "held-out loss" if any(r["val_loss"] is not None for r in rows) else "training loss"
    seed = "data in file order" if options.seed is None else f"seed {options.seed}"
    lines = [
        "# psyche compare",
        "",
        f"Model `{options.model}`, {options.total_steps} steps of {options.total_batch} x "
        f"{options.sequence_length} tokens, {seed}; each setting at its best "
        f"learning rate by {by}. `loss` is the mean training loss of the last "
        f"{rows[0]['tail']} steps; bytes are what one peer sends per step; compression is "
        "against a dense fp32 gradient.",
        "",
        "| setting | best lr (tried) | loss | held-out loss | bytes / peer / step | "
        "compression | step time | optimizer share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        held = f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-"
        ratio = f"{r['compression']:,.0f}x" if r["compression"] else "-"
        share = r["optimizer_s"] / r["step_time_s"] if r["step_time_s"] else math.nan
        tried = ", ".join(f"{x:g}" for x in r["tried"])
        lines.append(
            f"| `{r['setting']}` | {r['learning_rate']:g} ({tried}) | {r['loss']:.4f} | {held} | "
            f"{r['bytes_per_step']:,.0f} | {ratio} | {r['step_time_s'] * 1000:,.1f} ms | "
            f"{share:.0%} |"
        )
    lines += ["", "![loss against tokens and bytes sent](curves.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    _plot(out, rows)


def _kind(row: dict[str, Any]) -> str:
    return row["setting"].partition(":")[0]


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving mean (a short run's per-step loss is too noisy to rank curves by)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def _plot(out: Path, rows: list[dict[str, Any]]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # the table stands alone; psyche-core[plot] adds the chart
    curves = []
    for r in rows:
        metrics = _read(out / r["metrics"])
        sent, cumulative = 0.0, []
        for m in metrics:
            sent += m["bytes_sent"]
            cumulative.append(sent)
        losses = [m["loss"] for m in metrics]
        window = max(1, len(losses) // 30)
        curves.append((r, [m["tokens"] for m in metrics], cumulative, _smooth(losses, window)))
    # the two best runs (by the report's own score) drawn bold; the rest thin
    ranked = sorted(rows, key=lambda r: r["val_loss"] if r["val_loss"] is not None else r["loss"])
    bold = {ranked[0]["setting"]} | {
        next((r["setting"] for r in ranked if _kind(r) != _kind(ranked[0])), "")
    }
    colours = plt.get_cmap("tab20" if len(rows) > 10 else "tab10")
    fig, (by_tokens, by_bytes) = plt.subplots(1, 2, figsize=(13, 5))
    for number, (r, tokens, cumulative, losses) in enumerate(curves):
        style = {
            "color": colours(number % colours.N),
            "linestyle": ("-", "--", ":")[number // colours.N % 3],
            "linewidth": 2.2 if r["setting"] in bold else 1.0,
            "label": f"{r['setting']} @ {r['learning_rate']:g}",
        }
        by_tokens.plot(tokens, losses, **style)
        by_bytes.plot(cumulative, losses, **style)
    # show where the runs differ: the losses after the first tenth of each run, bar outliers
    later = sorted(v for c in curves for v in c[3][len(c[3]) // 10 :])
    top = later[int(0.95 * (len(later) - 1))] if later else None
    low = later[0] if later else None
    by_bytes.set_xscale("log")
    for axis, x in ((by_tokens, "tokens"), (by_bytes, "bytes sent per peer (cumulative)")):
        axis.set_xlabel(x)
        axis.set_ylabel("training loss (moving mean)")
        axis.grid(alpha=0.3)
        if top is not None and low is not None and top > low:
            axis.set_ylim(low - 0.05 * (top - low), top)
    fig.legend(
        *by_tokens.get_legend_handles_labels(),
        loc="lower center",
        ncol=3 if len(rows) > 4 else len(rows),
        fontsize=7,
        frameon=False,
    )
    rows_of_legend = -(-len(rows) // (3 if len(rows) > 4 else max(1, len(rows))))
    fig.tight_layout(rect=(0, min(0.45, 0.035 * rows_of_legend + 0.02), 1, 1))
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)

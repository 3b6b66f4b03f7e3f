"""``psyche bench``: short measurements of this machine (``psyche bench peak``)."""

from __future__ import annotations

import click


@click.group("bench")
def bench_command() -> None:
    """Measure this machine (results cached for psyche train's MFU)."""


@bench_command.command("peak")
@click.option(
    "--dtype",
    "dtypes",
    type=click.Choice(["float32", "bfloat16"]),
    multiple=True,
    help="Dtypes to measure (repeatable); default both.",
)
def peak_command(dtypes: tuple[str, ...]) -> None:
    """Peak matmul FLOP/s of this CPU per dtype, cached per machine (~/.cache/psyche, or
    $PSYCHE_CACHE_DIR) as the denominator of MFU in psyche train's metrics. A shared or busy
    machine measures low; run it when the machine is idle."""
    import torch

    from psyche_core.flops import bench_cpu_peaks, cache_dir, machine_busy

    chosen = tuple(getattr(torch, d) for d in (dtypes or ("float32", "bfloat16")))
    if machine_busy():
        click.echo(
            "warning: other work is using the CPUs now; the peak will measure low and MFU read "
            "high until you rerun this on an idle machine",
            err=True,
        )
    found = bench_cpu_peaks(chosen)
    for name, flops in found.items():
        click.echo(f"{name:9s} {flops / 1e9:8.1f} GFLOP/s")
    click.echo(f"cached in {cache_dir() / 'peak_flops.json'}")

"""``psyche train``, top to bottom: resolve the options into a run plan, start the peers,
report.

- :mod:`psyche_core.resolve`: names to things (model, data provider, optimizer, device, dtype);
- :mod:`psyche_core.plan`: the frozen :class:`~psyche_core.plan.RunPlan`, checked once;
- :mod:`psyche_core.launch`: threads, worker processes or a torchrun rank;
- :mod:`psyche_core.peer`: one peer builds its model, data and optimizer and trains;
- :mod:`psyche_core.reporting`: where the metrics and the closing lines go.
"""

from __future__ import annotations

import threading
from typing import Any

from rich.console import Console

from psyche_core.launch import launch
from psyche_core.options import Options
from psyche_core.plan import make_plan
from psyche_core.plugins import Plugins
from psyche_core.reporting import print_summary


def train(
    options: Options,
    plugins: Plugins,
    console: Console | None = None,
    stop: threading.Event | None = None,
) -> dict[str, Any]:
    """Run ``psyche train`` with resolved options; returns peer 0's summary.

    Under torchrun this process is one rank; otherwise the ``--peers`` x ``--data-parallelism``
    x ``--tensor-parallelism`` ranks are started here, as processes (gloo / NCCL) or as
    threads (``--dp-backend threads``).
    """
    console = console or Console(stderr=True, soft_wrap=True)
    plan = make_plan(options, plugins)
    summary, rank = launch(plan, plugins, console, stop)
    if rank == 0:
        print_summary(console, summary)
    return summary

"""Module-level functions for worker processes (they must be picklable by reference)."""

import os
import time

import torch

from psyche_core.options import collect_option_specs, resolve
from psyche_core.peer import check_same_config
from psyche_core.plan import config_fingerprint
from psyche_core.plugins import Plugins
from tests.core import toy_plugin


def mismatched_config(comm, _):
    learning_rate = 1e-3 if comm.rank == 0 else 2e-3
    options = resolve(collect_option_specs([]), {"learning_rate": learning_rate})
    plugins = Plugins.load(entry_points=False, extra=[toy_plugin])
    check_same_config(comm, config_fingerprint(options, plugins))


def one_peer_dies(comm, _):
    if comm.rank == 1:
        os._exit(3)
    time.sleep(0.5)
    comm.all_reduce_mean_([torch.ones(4)])


def one_peer_hangs(comm, _):
    if comm.rank == 1:
        time.sleep(30)
    comm.all_reduce_mean_([torch.ones(4)])


def gather_ranks(comm, _):
    t = torch.full((2,), float(comm.rank))
    comm.all_reduce_mean_([t])
    return (
        comm.rank,
        t.tolist(),
        [b.tolist() for b in comm.all_gather_bytes(torch.arange(comm.rank + 1, dtype=torch.uint8))],
    )

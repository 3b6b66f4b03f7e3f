"""One peer of a run: build the model, data and optimizer from the plan, agree with the other
peers, train, save."""

from __future__ import annotations

import json
import threading
from typing import Any

import torch
from rich.console import Console

from psyche_core import checkpoint, parallel
from psyche_core.comm import Communicator
from psyche_core.compiling import compile_regions
from psyche_core.errors import PsycheError
from psyche_core.evaluation import HeldOut
from psyche_core.plan import ResumePoint, RunPlan, eval_data_options
from psyche_core.plugins import Plugins
from psyche_core.reporting import RunInfo, print_header
from psyche_core.topology import Topology
from psyche_core.trainer import CheckpointPolicy, Reporter, Trainer


def run_peer(
    comm: Communicator | Topology,
    plan: RunPlan,
    plugins: Plugins,
    console: Console,
    stop: threading.Event | None,
    device: torch.device | None = None,
) -> dict[str, Any]:
    """Train as one rank (``comm``: its topology, or the communicator of a peers-only run);
    returns the trainer's summary (rank 0's is reported)."""
    topology = comm if isinstance(comm, Topology) else Topology.of_peers(comm)
    world = topology.world
    options = plan.options
    device = device or plan.device
    check_same_config(world, plan.fingerprint)
    torch.manual_seed(plan.seed)
    model = plan.model.build(plan.seed, device=device, dtype=plan.dtype, options=options)
    if plan.compile:
        compile_regions(model)  # in place: state-dict keys and checkpoints are unchanged
    world.broadcast_(list(model.state_dict().values()), src=0)
    if topology.layout.needs_mesh:
        parallel.parallelize(
            model,
            topology.mesh,
            topology.layout.tensor,
            topology.layout.fsdp,
            mixed_bf16=plan.trainer.autocast_dtype == torch.bfloat16,
        )
    policy = None
    if options.save_path:
        policy = CheckpointPolicy(
            options.save_path, options.checkpoint_every, options.keep_last, plan.record
        )
    data = plan.data.load()(options, plugins.data_providers)
    eval_data = None
    try:
        held_out, eval_data = _held_out(plan, data, plugins)
        evaluators = [spec.load()(options, model) for spec in plan.evaluators]
        optimizer = plan.optimizer.load()(model, options)
        reporters: list[Reporter] = []
        if world.rank == 0:
            print_header(console, plan, model, data, device)
            run = RunInfo(console, options.start_step, options.total_steps, plan.record)
            for spec in plan.reporters:
                reporter = spec.load()(options, run)
                if reporter is not None:
                    reporters.append(reporter)
        trainer = Trainer(
            model,
            data,
            optimizer,
            plan.schedule,
            plan.trainer,
            None,
            reporters,
            device,
            policy,
            held_out,
            evaluators,
            topology,
        )
        if plan.resume is not None:
            state = checkpoint.read_peer_state(plan.resume.path, _state_index(plan.resume, trainer))
            trainer.load_peer_state(state, plan.resume.step, plan.resume.tokens)
        summary = trainer.train(stop)
        summary["parameters"] = model.num_parameters()
    finally:
        data.close()
        if eval_data is not None:
            eval_data.close()
    if options.save_path and not summary.get("stopped"):
        with parallel.full_weights(model):  # every rank takes part in gathering shards
            if world.rank == 0:
                # The run record at the top marks the folder as a psyche run (psyche_core.paths).
                record = json.dumps(plan.record, indent=2, sort_keys=True)
                model.save_pretrained(options.save_path, extra_files={checkpoint.RUN_FILE: record})
                summary["saved"] = options.save_path
    return summary


def _state_index(resume: ResumePoint, trainer: Trainer) -> int:
    """Which saved optimizer state this rank continues from: its peer's (states saved whole,
    any layout), or its own rank's (a sharded run of an optimizer with per-rank state, which
    resumes on the same layout only)."""
    if not resume.states_per_rank and not trainer.states_per_rank:
        return trainer.topology.peer
    if resume.layout != trainer.layout:
        raise PsycheError(
            f"{resume.path} holds the optimizer state of each rank of a "
            f"{resume.layout.describe()} run; this {trainer.optimizer.__class__.__name__} run "
            f"is laid out as {trainer.layout.describe()}: resume it with the checkpoint's layout"
        )
    return trainer.topology.rank


def _held_out(plan: RunPlan, data: Any, plugins: Plugins) -> tuple[HeldOut | None, Any]:
    """What ``--eval-every`` scores, and the separate data provider it reads (to close)."""
    options = plan.options
    micro_batch = plan.trainer.micro_batch or options.total_batch // plan.layout.data_ranks
    if plan.eval_data is not None:
        eval_data = plan.eval_data.load()(eval_data_options(options), plugins.data_providers)
        try:
            held_out = HeldOut.separate(
                eval_data, options.eval_batches, options.total_batch, micro_batch
            )
        except BaseException:
            eval_data.close()
            raise
        return held_out, eval_data
    if options.eval_holdout:
        return HeldOut.holdout(data, options.eval_holdout, micro_batch), None
    return None, None


def check_same_config(comm: Communicator, fingerprint: dict[str, Any]) -> None:
    """Refuse to start when peers were launched with different settings or plugins."""
    if comm.world_size == 1:
        return
    everyone = comm.all_gather_object(fingerprint)
    for rank, theirs in enumerate(everyone):
        if theirs != everyone[0]:
            keys = sorted(
                k for k in set(theirs) | set(everyone[0]) if theirs.get(k) != everyone[0].get(k)
            )
            raise PsycheError(
                f"peer {rank} was started with a different configuration than peer 0 "
                f"(differs in: {', '.join(keys)}); start every peer with the same options"
            )

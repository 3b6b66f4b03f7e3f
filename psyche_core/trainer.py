"""The training loop: one rank's view of a run of P peers x D replicas x T tensor-parallel ranks
(see :mod:`psyche_core.layout`).

Each rank runs a :class:`Trainer` over its own model (replica or shards), data provider and
optimizer; ranks meet only in the collectives of its :class:`~psyche_core.topology.Topology`
and of DTensor, so the same code runs as threads of one process (``LocalCommunicator``) or as
processes on several machines (``torch.distributed``).

Global step ``s`` uses samples ``(s-1)*B .. s*B-1`` of the provider (``B`` = total batch,
wrapping past the end for multi-epoch runs); peer ``r`` of ``N`` takes the ``r``-th slice of
``B/N`` samples and runs it as micro-batches, each loss divided by the number of micro-batches
(so the accumulated gradient is the mean), then the optimizer takes one step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from psyche_core import parallel
from psyche_core.comm import Communicator, LocalGroup
from psyche_core.data import DataProvider, TokenizedData, collate
from psyche_core.errors import PsycheError
from psyche_core.evaluation import HeldOut, evaluate
from psyche_core.model import CausalLM
from psyche_core.optim import Optimizer, StepContext, clip_grad_norm_
from psyche_core.prefetch import Prefetcher
from psyche_core.schedule import LRSchedule
from psyche_core.topology import Topology


@dataclass(frozen=True)
class TrainerConfig:
    """The loop's settings (the ``psyche train`` flags of the same names)."""

    total_batch: int
    total_steps: int
    micro_batch: int | None = None
    start_step: int = 1
    max_grad_norm: float = 1.0
    grad_accum_in_fp32: bool = False
    optim_stats: bool = False
    autocast_dtype: torch.dtype | None = None  # bf16-mixed: forward/backward under autocast
    peak_flops: float | None = None  # the device's peak FLOP/s at the compute dtype, for MFU
    compiled: bool = False  # the model has torch.compile'd regions: report compile time
    eval_every: int = 0  # --eval-every: steps between evaluations (and at the last)


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and when the trainer writes resumable checkpoints."""

    root: str
    every: int = 0  # steps between checkpoints; 0: only when stopped early
    keep_last: int | None = None
    run_record: dict[str, Any] | None = None


class Evaluator(Protocol):
    """An evaluation during training (``register_evaluators``): scores for ``model`` now."""

    def __call__(self, model: CausalLM, step: int) -> dict[str, float]: ...


class Reporter(Protocol):
    """Receives metrics on peer 0 (console, JSONL file, TensorBoard...)."""

    def on_start(self, info: dict[str, Any]) -> None: ...

    def on_step(self, metrics: dict[str, Any]) -> None: ...

    def on_end(self, summary: dict[str, Any]) -> None: ...


def plan_batches(total_batch: int, micro_batch: int | None, world_size: int) -> tuple[int, int]:
    """``(per_peer, micro_batch)``; a clear error when the batch cannot be split evenly."""
    if total_batch < 1:
        raise PsycheError(f"--total-batch must be at least 1, got {total_batch}")
    if total_batch % world_size:
        raise PsycheError(
            f"--total-batch {total_batch} cannot be split evenly over {world_size} data-parallel "
            f"peers; use a multiple of {world_size}"
        )
    per_peer = total_batch // world_size
    micro = per_peer if micro_batch is None else micro_batch
    if micro < 1:
        raise PsycheError(f"--micro-batch must be at least 1, got {micro}")
    if per_peer % micro:
        raise PsycheError(
            f"each peer's share of --total-batch ({total_batch} / {world_size} peers = "
            f"{per_peer}) must be a multiple of --micro-batch {micro}"
        )
    return per_peer, micro


class Trainer:
    """Trains ``model`` on ``data`` with ``optimizer``, as peer ``communicator.rank``."""

    def __init__(
        self,
        model: CausalLM,
        data: DataProvider,
        optimizer: Optimizer,
        schedule: LRSchedule,
        config: TrainerConfig,
        communicator: Communicator | None = None,
        reporters: Sequence[Reporter] = (),
        device: torch.device | str = "cpu",
        checkpoints: CheckpointPolicy | None = None,
        held_out: HeldOut | None = None,
        evaluators: Sequence[Evaluator] = (),
        topology: Topology | None = None,
    ) -> None:
        """``communicator``: the peers of a run without replicas or tensor parallelism;
        ``topology``: this rank's place in any layout (replaces ``communicator``)."""
        self.model = model
        self.data = data
        self.optimizer = optimizer
        self.schedule = schedule
        self.config = config
        if topology is None:
            topology = Topology.of_peers(communicator or LocalGroup(1).communicator(0))
        self.topology = topology
        self.layout = topology.layout
        self.comm = topology.link  # the peer link: the traffic bytes_sent counts
        self.world = topology.world  # every rank: agreement, metrics, evaluation
        self.reporters = list(reporters)
        self.device = torch.device(device)
        self.checkpoints = checkpoints
        self.per_peer, self.micro_batch = plan_batches(
            config.total_batch, config.micro_batch, self.layout.data_ranks
        )
        # gradients clipped by their global norm: the whole (DTensor) parameter when sharded
        self._clip_params = [
            optimizer.shards[name].param if name in optimizer.shards else p
            for name, p in optimizer.named_params
        ]
        if config.start_step < 1:
            raise PsycheError(f"--start-step must be at least 1, got {config.start_step}")
        self.held_out = held_out
        self.evaluators = list(evaluators)
        # a holdout is the data's tail: training wraps around before it
        self.train_sequences = data.num_sequences
        if held_out is not None and held_out.from_training_data:
            self.train_sequences -= len(held_out.ids)
        if self.train_sequences < 1:
            raise PsycheError(f"the data provider has no sequences ({data.describe()})")
        self.next_step = config.start_step
        # The step the weights and optimizer state reflect; None while they are changing.
        self.state_step: int | None = config.start_step - 1
        self.tokens_seen = 0
        self.stop_agreed = False  # set when any peer asked to stop; all peers see it together
        self.flops_per_token: float | None = None  # known once the first batch's length is
        self.model_flops = 0.0  # this peer's model FLOPs so far, and the seconds they took
        self.compute_s = 0.0
        self.compile_s = 0.0
        self._prefetch = Prefetcher(data, self.sample_ids)

    # -- data addressing ------------------------------------------------------------------------

    def sample_ids(self, step: int) -> Sequence[int]:
        """This peer's sample indices for global ``step`` (wrapping past the end)."""
        first = (step - 1) * self.config.total_batch + self.topology.data_rank * self.per_peer
        n = self.train_sequences
        start = first % n
        if start + self.per_peer <= n:
            return range(start, start + self.per_peer)
        return [(first + i) % n for i in range(self.per_peer)]

    # -- one step -------------------------------------------------------------------------------

    def train_step(self, step: int, stop_requested: bool = False) -> dict[str, Any]:
        """Run global ``step``; returns its metrics (identical on every peer where averaged)."""
        started = time.perf_counter()
        compiling_before = _compile_seconds() if self.config.compiled else 0.0
        samples, data_wait = self._prefetch.get(step, self.config.total_steps)
        lr = self.schedule(step)
        ctx = StepContext(
            step=step,
            lr=lr,
            prev_lr=self.schedule(step - 1) if step > 1 else self.schedule(0),
            communicator=self.comm,
            collect_stats=self.config.optim_stats,
        )
        bytes_before = self.comm.bytes_sent
        intra_before = self.topology.replicas.bytes_sent
        self.model.train()
        optimizer_started = time.perf_counter()
        self.optimizer.prepare_step(ctx)
        optimizer_s = time.perf_counter() - optimizer_started
        try:
            local_loss, tokens = self._forward_backward(samples)
            # One small all-reduce carries what peers must agree on before anything changes:
            # a non-finite loss stops every peer with the weights of the last completed step.
            shared = torch.tensor([local_loss, float(stop_requested)], dtype=torch.float64)
            with self.world.uncounted():
                self.world.all_reduce_mean_([shared])
            loss, stop = shared.tolist()
            if not math.isfinite(loss):
                raise PsycheError(
                    f"loss is {loss} at step {step}; lower --learning-rate or check the data"
                )
            # the optimizer's share of the step: its lookahead, exchange, clipping and update
            optimizer_started = time.perf_counter()
            self.optimizer.attach_grads()
            grads = [p.grad for p in self.optimizer.params if p.grad is not None]
            if self.layout.replicas > 1 and not self.layout.fsdp:
                # plain replicas average inside the peer (FSDP2 reduce-scattered already)
                self.topology.replicas.all_reduce_mean_(grads)
            if self.optimizer.averages_gradients:
                self.comm.all_reduce_mean_(grads)
            norm = clip_grad_norm_(self._clip_params, self.config.max_grad_norm)
        except BaseException:
            self.optimizer.abort_step(ctx)
            self.optimizer.zero_grad()
            raise
        self.state_step = None  # weights and optimizer state are changing
        stats = self.optimizer.step(ctx)
        self.optimizer.zero_grad()
        optimizer_s += time.perf_counter() - optimizer_started
        model_metrics = self.model.step_end(self.world)
        self.state_step = step
        self.tokens_seen += tokens * self.layout.data_ranks
        self.next_step = step + 1
        bytes_sent = self.comm.bytes_sent - bytes_before
        intra_bytes = self.topology.replicas.bytes_sent - intra_before
        mean_norm = norm  # with averaged gradients every peer clipped the same ones
        if self.layout.world_size > self.layout.peers:
            mean_norm, bytes_sent, intra_bytes = self._peer_totals(norm, bytes_sent, intra_bytes)
        elif not self.optimizer.averages_gradients:
            norms = torch.tensor([norm], dtype=torch.float64)
            with self.world.uncounted():
                self.world.all_reduce_mean_([norms])
            mean_norm = norms.item()
        elapsed = time.perf_counter() - started
        compile_s = 0.0
        if self.config.compiled:  # compile time is reported on its own, not as step time
            compile_s = min(elapsed, _compile_seconds() - compiling_before)
            elapsed -= compile_s
            self.compile_s += compile_s
        global_tokens = tokens * self.layout.data_ranks
        throughput = self._throughput(tokens, elapsed)
        metrics: dict[str, Any] = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "grad_norm": mean_norm,
            "tokens_per_s": global_tokens / elapsed if elapsed > 0 else 0.0,
            "tokens": self.tokens_seen,
            "step_time_s": elapsed,
            "optimizer_s": optimizer_s,
            "data_wait_s": data_wait,
            "bytes_sent": bytes_sent,
            **({"intra_peer_bytes": intra_bytes} if self.layout.replicas > 1 else {}),
            **throughput,
            **({"compile_s": compile_s} if compile_s > 0 else {}),
            **stats,
            **model_metrics,
        }
        self.stop_agreed = stop > 0
        return metrics

    def _peer_totals(self, norm: float, sent: int, intra: int) -> tuple[float, int, int]:
        """The mean gradient norm over peers, and peer 0's bytes summed over its ranks: each
        tensor-parallel or FSDP shard crosses the peer link from its own rank."""
        mine = self.topology.peer == 0
        values = torch.tensor(
            [norm, sent if mine else 0, intra if mine else 0], dtype=torch.float64
        )
        with self.world.uncounted():
            self.world.all_reduce_mean_([values])
        world = self.layout.world_size
        # with averaged gradients every rank clipped the same ones: its own norm is the mean
        mean_norm = norm if self.optimizer.averages_gradients else values[0].item()
        return mean_norm, round(values[1].item() * world), round(values[2].item() * world)

    def _throughput(self, tokens: int, seconds: float) -> dict[str, float]:
        """This rank's achieved model TFLOP/s and, when the peak is known, MFU (a
        tensor-parallel rank computes 1/T of its tokens' FLOPs)."""
        flops = (self.flops_per_token or 0.0) * tokens / self.layout.tensor
        self.model_flops += flops
        self.compute_s += seconds
        achieved = flops / seconds if seconds > 0 else 0.0
        out = {"model_tflops": achieved / 1e12}
        if self.config.peak_flops:
            out["mfu"] = achieved / self.config.peak_flops
        return out

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.config.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.config.autocast_dtype)

    def _forward_backward(self, samples: list[TokenizedData]) -> tuple[float, int]:
        """Accumulate gradients over micro-batches; returns (mean loss, tokens)."""
        n_micro = len(samples) // self.micro_batch
        accumulators = self._fp32_accumulators()
        total = torch.zeros((), dtype=torch.float32)
        tokens = 0
        for i in range(n_micro):
            chunk = samples[i * self.micro_batch : (i + 1) * self.micro_batch]
            batch = collate(chunk).to(self.device)
            if self.flops_per_token is None:
                self.flops_per_token = self.model.flops_per_token(batch.input_ids.shape[1])
            with self._autocast():
                output = self.model(
                    batch.input_ids,
                    labels=batch.labels,
                    position_ids=batch.position_ids,
                    sequence_lengths=batch.sequence_lengths,
                    return_logits=False,
                )
            if output.loss is None:
                raise PsycheError(f"{type(self.model).__name__}.forward returned no loss")
            # Each micro-batch's mean loss counts 1/n_micro, so the accumulated gradient is
            # the gradient of the peer's mean loss (Psyche scales the same way).
            loss = output.loss / n_micro
            loss.backward()
            total += loss.detach().float().cpu()
            tokens += batch.num_tokens
            if accumulators is not None:
                for p, acc in accumulators:
                    if p.grad is not None:
                        acc += p.grad.float()
                        p.grad = None
        if accumulators is not None:
            for p, acc in accumulators:
                p.grad = acc.to(p.dtype)
        return float(total), tokens

    def _fp32_accumulators(self) -> list[tuple[torch.nn.Parameter, torch.Tensor]] | None:
        if not self.config.grad_accum_in_fp32:
            return None
        params = [p for p in self.optimizer.params if p.dtype != torch.float32]
        if not params:
            return None  # float32 parameters accumulate in float32 already
        return [(p, torch.zeros_like(p, dtype=torch.float32)) for p in params]

    # -- the loop -------------------------------------------------------------------------------

    def train(self, stop: threading.Event | None = None) -> dict[str, Any]:
        """Run steps ``next_step .. total_steps``; returns a summary.

        ``stop`` (set by a signal handler) ends the run after the current step, on every peer at
        the same step.
        """
        first = self.next_step
        summary: dict[str, Any] = {"first_step": first, "last_step": first - 1, "stopped": False}
        started = time.perf_counter()
        for reporter in self.reporters:
            reporter.on_start({"first_step": first, "total_steps": self.config.total_steps})
        try:
            for step in range(first, self.config.total_steps + 1):
                metrics = self.train_step(step, stop_requested=bool(stop and stop.is_set()))
                summary.update(last_step=step, loss=metrics["loss"])
                if self._evaluation_due(step):
                    metrics.update(self.evaluate(step))
                    if "val_loss" in metrics:
                        summary["val_loss"] = metrics["val_loss"]
                for reporter in self.reporters:
                    reporter.on_step(metrics)
                if self._checkpoint_due(step):
                    summary["checkpoint"] = str(self.save_checkpoint(step))
                if self.stop_agreed:
                    summary["stopped"] = True
                    break
        except Exception as exc:
            _add_note(exc, self.emergency_checkpoint(first))
            raise
        finally:
            self._prefetch.close()
        summary["elapsed_s"] = time.perf_counter() - started
        summary["tokens"] = self.tokens_seen
        if self.compute_s > 0:
            achieved = self.model_flops / self.compute_s
            summary["model_tflops"] = achieved / 1e12
            if self.config.peak_flops:
                summary["mfu"] = achieved / self.config.peak_flops
        if self.config.compiled:
            summary["compile_s"] = self.compile_s
        for reporter in self.reporters:
            reporter.on_end(summary)
        return summary

    # -- evaluation -----------------------------------------------------------------------------

    def _evaluation_due(self, step: int) -> bool:
        if self.held_out is None and not self.evaluators:
            return False
        every = self.config.eval_every or 1
        return step % every == 0 or step == self.config.total_steps

    def evaluate(self, step: int) -> dict[str, float]:
        """The held-out loss and every evaluator's scores for the model as it is now."""
        scores: dict[str, float] = {}
        if self.held_out is not None:
            scores.update(
                evaluate(
                    self.model,
                    self.held_out,
                    self.world,
                    self.device,
                    self.topology.data_rank,
                    self.layout.data_ranks,
                )
            )
        for evaluator in self.evaluators:
            scores.update(evaluator(self.model, step))
        return scores

    # -- checkpoints ----------------------------------------------------------------------------

    def _checkpoint_due(self, step: int) -> bool:
        policy = self.checkpoints
        if policy is None:
            return False
        periodic = policy.every > 0 and (
            step % policy.every == 0 or step == self.config.total_steps
        )
        return periodic or self.stop_agreed

    def peer_state(self) -> dict[str, Any]:
        """This peer's part of a checkpoint: optimizer state and RNG state."""
        rng: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"optimizer": self.optimizer.state_dict(), "rng": rng}

    def load_peer_state(self, state: dict[str, Any], step: int, tokens_seen: int) -> None:
        """Continue after ``step`` from a checkpoint's peer state."""
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.next_step = step + 1
        self.state_step = step
        self.tokens_seen = tokens_seen

    def emergency_checkpoint(self, first_step: int) -> str | None:
        """After a fatal error: write the last completed step from this peer alone (no
        collective can be trusted now); returns the line that tells the user where, or why
        not. Every surviving peer tries; the first complete copy wins."""
        from psyche_core import checkpoint

        policy = self.checkpoints
        if policy is None:
            return None
        if self.state_step is None:
            return (
                "no emergency checkpoint: the error struck while the weights were changing; "
                "resume from the last periodic checkpoint"
            )
        if self.state_step < first_step:
            return None  # nothing new since the run started
        target = Path(policy.root) / checkpoint.step_dir_name(self.state_step)
        if checkpoint.verify(target) is None:
            return f"last checkpoint: {target} (continue with --resume {target})"
        if self.layout.needs_mesh:
            return (
                "no emergency checkpoint: a sharded model needs every rank to gather its "
                "weights; resume from the last periodic checkpoint"
            )
        world = self.comm.world_size
        if world > 1 and not self.optimizer.averages_gradients:
            return (
                f"no emergency checkpoint from peer {self.comm.rank}: each peer of this "
                "optimizer holds its own state; resume from the last periodic checkpoint"
            )
        try:
            # Averaged gradients keep every peer's optimizer state identical, so this peer's
            # state stands in for the lost ones.
            mine = checkpoint.state_to_bytes(self.peer_state())
            trainer = {"tokens": self.tokens_seen, "world_size": world, "emergency": True}
            checkpoint.write(
                policy.root,
                self.state_step,
                self.model,
                [mine] * world,
                trainer,
                policy.run_record or {},
                emergency=True,
            )
        except Exception as exc:  # the original error matters more
            return f"emergency checkpoint {target} could not be written: {exc}"
        return (
            f"emergency checkpoint of step {self.state_step}: {target} "
            f"(continue with --resume {target})"
        )

    @property
    def states_per_rank(self) -> bool:
        """Whether checkpoints hold each rank's optimizer state (a sharded run of an optimizer
        whose state is not layout-free) rather than each peer's."""
        return self.layout.needs_mesh and not self.optimizer.layout_free_state

    def save_checkpoint(self, step: int) -> Path:
        """Every peer (or, for per-rank states, every rank) sends its state to rank 0, which
        writes ``root/step-NNNNNN`` with the model's full weights."""
        from psyche_core import checkpoint

        assert self.checkpoints is not None
        mine = checkpoint.state_to_bytes(self.peer_state())  # sharded: gathered whole here
        group = self.world if self.states_per_rank else self.comm
        with group.uncounted():
            payload = torch.frombuffer(bytearray(mine), dtype=torch.uint8)
            states = group.all_gather_bytes(payload)
        target = Path(self.checkpoints.root) / checkpoint.step_dir_name(step)
        error = None
        with parallel.full_weights(self.model):  # every rank takes part in the gather
            if self.world.rank == 0:
                try:
                    trainer = {
                        "tokens": self.tokens_seen,
                        "world_size": self.layout.peers,
                        "layout": dataclasses.asdict(self.layout),
                        "states": "rank" if self.states_per_rank else "peer",
                    }
                    checkpoint.write(
                        self.checkpoints.root,
                        step,
                        self.model,
                        [bytes(s.numpy().tobytes()) for s in states],
                        trainer,
                        self.checkpoints.run_record or {},
                        self.checkpoints.keep_last,
                    )
                except Exception as exc:
                    error = f"writing checkpoint {target} failed: {exc}"
        # Everyone learns whether rank 0 succeeded, so no rank trains on past a failed save.
        with self.world.uncounted():
            errors = [e for e in self.world.all_gather_object(error) if e]
        if errors:
            raise PsycheError(errors[0])
        return target


def _compile_seconds() -> float:
    """Wall seconds torch.compile has spent in this process (dynamo's own accounting)."""
    try:
        from torch._dynamo.utils import calculate_time_spent

        return float(calculate_time_spent().get("total_wall_time", 0.0))
    except Exception:  # an internal API: without it, compile time counts as step time
        return 0.0


def _add_note(exc: BaseException, note: str | None) -> None:
    """Put ``note`` after the error's own line, which stays the first thing the user reads."""
    if not note:
        return
    if isinstance(exc, PsycheError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]}\n{note}",)
    elif hasattr(exc, "add_note"):
        exc.add_note(note)

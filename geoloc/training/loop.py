"""The training loop: epochs of mined tuples, validation, early stopping, checkpoints, Ctrl-C.

One epoch visits every training query once in a seeded random order, a few queries
(``batch_size``) per optimizer step. Before a step the mining cache is refreshed when it has
served ``cache_refresh`` queries. After the epoch one descriptor pass over all photos gives the
validation recall@N, the exact training objective and the next epoch's fresh cache. The model
stays in eval mode throughout: BatchNorm statistics (EfficientNet) are frozen, since batches of
a few tuples are far too small to estimate them, and cached and trained descriptors then agree.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from geoloc.training import checkpoint
from geoloc.training.images import (
    ImageSet,
    StopRequested,
    amp_dtype,
    autocast,
    compute_descriptors,
    forward_grouped,
)
from geoloc.training.loss import triplet_ranking_loss
from geoloc.training.mining import DescriptorCache, HardNegativeMiner, rng_state, set_rng_state
from geoloc.training.tuples import PlaceSplit, TupleIndex
from geoloc.progress import Progress
from geoloc.training.report import EpochReport, format_epoch
from geoloc.training.validate import recall_at_n, recall_score, triplet_objective


@dataclass
class TrainSettings:
    """The paper's training recipe; every value is overridable from the command line."""

    epochs: int = 30
    margin: float = 0.1
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-3
    lr_step: int = 5            # halve the learning rate every this many epochs
    lr_gamma: float = 0.5
    batch_size: int = 4         # training tuples (queries) per optimizer step
    n_neg: int = 10             # hard negatives kept per tuple
    neg_sample: int = 1000      # negatives sampled per query before picking the hardest
    cache_refresh: int = 1000   # queries between refreshes of the mining cache
    patience: int = 10          # epochs without improvement before stopping early
    threshold_m: float = 25.0   # a validation answer is right within this distance
    seed: int = 0
    eval_batch_size: int = 16   # images per forward pass when computing descriptors
    amp: bool = True            # mixed precision (CUDA only)


@dataclass
class TrainResult:
    history: list[EpochReport]
    best_epoch: int
    best_recall: dict[str, float] | None
    epochs_run: int
    stopped_early: bool
    validated: bool
    best_state: dict[str, torch.Tensor] = field(repr=False, default_factory=dict)  # trainable parameters


class Trainer:
    """Trains ``model`` on the photos of ``images`` with positions ``positions_m`` (N×2 metres).

    ``split`` says which photos train and which validate (global indices); ``tuples`` indexes
    the training photos only (local indices 0..len(split.train)-1). ``fingerprint`` identifies
    the data and settings; a checkpoint from a different fingerprint is refused on resume.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        images: ImageSet,
        positions_m: np.ndarray,
        split: PlaceSplit,
        tuples: TupleIndex,
        settings: TrainSettings,
        device: torch.device,
        checkpoint_dir: Path,
        *,
        fingerprint: str = "",
        reporter: Progress | None = None,
        on_step: Callable[["Trainer"], None] | None = None,
    ):
        self.model = model
        self.images = images
        self.positions_m = np.asarray(positions_m, dtype=np.float64)
        self.split = split
        self.tuples = tuples
        self.s = settings
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir)
        self.fingerprint = fingerprint
        self.reporter = reporter or Progress()
        self.on_step = on_step
        self.train_idx = np.asarray(split.train, dtype=np.int64)
        self.val_idx = np.asarray(split.val, dtype=np.int64)
        self.validated = False  # set in run() once we know the val set has scoreable queries

        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters")
        self.optimizer = torch.optim.SGD(
            self.params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, step_size=max(1, settings.lr_step), gamma=settings.lr_gamma
        )
        use_scaler = settings.amp and device.type == "cuda" and amp_dtype(device) == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.dim = int(getattr(model, "dim", 0)) or None
        self.cache: DescriptorCache | None = None
        self.miner = HardNegativeMiner(
            tuples, n_neg=settings.n_neg, neg_sample=settings.neg_sample, margin=settings.margin, seed=settings.seed + 1
        )
        self.rng = np.random.default_rng(settings.seed)

        self.epoch = 0                      # epochs completed
        self.order: np.ndarray | None = None  # query order of the epoch in progress
        self.step = 0                       # queries of that epoch already done
        self.loss_sum = 0.0
        self.trained = 0
        self.epoch_seconds = 0.0
        self.history: list[EpochReport] = []
        self.best_score = -math.inf
        self.best_epoch = 0
        self.best_recall: dict[str, float] | None = None
        self.bad_epochs = 0
        self.stopped_early = False
        self._stop = False

    # ---------------------------------------------------------------- stopping

    def request_stop(self) -> None:
        """Ask the loop to save a checkpoint and stop at the next safe point (what Ctrl-C does)."""
        self._stop = True

    def _should_stop(self) -> bool:
        return self._stop

    # ---------------------------------------------------------------- descriptors

    def _descriptors(self, indices: np.ndarray, label: str) -> torch.Tensor:
        self.reporter.stage(label, len(indices))
        try:
            return compute_descriptors(
                self.model,
                self.images,
                indices.tolist(),
                self.device,
                batch_size=self.s.eval_batch_size,
                amp=self.s.amp,
                dim=self.dim,
                should_stop=self._should_stop,
                on_progress=lambda n: self.reporter.advance(n),
            )
        finally:
            self.reporter.end_stage()

    def _ensure_cache(self, dim: int) -> DescriptorCache:
        if self.cache is None:
            self.cache = DescriptorCache(len(self.train_idx), dim)
        return self.cache

    def _end_of_epoch_pass(self) -> tuple[float, dict[str, float] | None]:
        """One pass over the photos: refreshes the cache, scores the objective and recall."""
        everything = np.concatenate([self.train_idx, self.val_idx]) if self.validated else self.train_idx
        desc = self._descriptors(everything, "descriptors")
        train_desc = desc[: len(self.train_idx)]
        self._ensure_cache(desc.shape[1]).update(train_desc)
        objective = triplet_objective(train_desc, self.tuples, self.s.margin, self.s.n_neg)
        recall = None
        if self.validated:
            full = torch.empty(len(self.positions_m), desc.shape[1])
            full[torch.as_tensor(everything)] = desc
            recall, _ = recall_at_n(full, self.positions_m, self.val_idx.tolist(), self.s.threshold_m)
        return objective, recall

    # ---------------------------------------------------------------- one step

    def _train_step(self, ks: np.ndarray) -> tuple[float, int]:
        cache = self.cache
        assert cache is not None
        mined = [self.miner.mine(int(k), cache) for k in ks]
        tuples = [t for t in mined if t is not None]
        if not tuples:
            return 0.0, 0
        local: list[int] = []
        slot: dict[int, int] = {}

        def at(i: int) -> int:
            if i not in slot:
                slot[i] = len(local)
                local.append(i)
            return slot[i]

        q_at = [at(t.query) for t in tuples]
        p_at = [at(t.positive) for t in tuples]
        k_max = max(len(t.negatives) for t in tuples)
        n_at = torch.zeros(len(tuples), k_max, dtype=torch.long)
        mask = torch.zeros(len(tuples), k_max, dtype=torch.bool)
        for row, t in enumerate(tuples):
            for col, neg in enumerate(t.negatives):
                n_at[row, col] = at(int(neg))
                mask[row, col] = True
        tensors = self.images.get_many([int(self.train_idx[i]) for i in local])

        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.s.amp):
            desc = forward_grouped(self.model, tensors, self.device, max(len(tensors), 1))
        desc = desc.float()
        losses = triplet_ranking_loss(
            desc[torch.as_tensor(q_at)],
            desc[torch.as_tensor(p_at)],
            desc[n_at.to(desc.device)],
            self.s.margin,
            mask.to(desc.device),
        )
        loss = losses.mean()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(losses.detach().sum()), len(tuples)

    # ---------------------------------------------------------------- checkpoints

    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"numpy": rng_state(self.rng), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": checkpoint.FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": self.epoch,
            "order": None if self.order is None else torch.from_numpy(self.order.copy()),
            "step": self.step,
            "loss_sum": self.loss_sum,
            "trained": self.trained,
            "epoch_seconds": self.epoch_seconds,
            "validated": self.validated,
            "model": self.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "cache": None if self.cache is None else self.cache.state_dict(),
            "miner": self.miner.state_dict(),
            "rng": rng,
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_recall": self.best_recall,
            "bad_epochs": self.bad_epochs,
            "stopped_early": self.stopped_early,
            "history": [r.to_json() for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.fingerprint:
            raise checkpoint.CheckpointError(
                f"{self.checkpoint_dir}: the checkpoint was made with other photos or settings; "
                "run with the same photos and options, or start over with --restart"
            )
        self.load_trainable_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state.get("cache") is not None:
            cache_state = state["cache"]
            self._ensure_cache(cache_state["descriptors"].shape[1]).load_state_dict(cache_state)
        self.miner.load_state_dict(state["miner"])
        set_rng_state(self.rng, state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.epoch = int(state["epoch"])
        self.order = None if state["order"] is None else state["order"].numpy().astype(np.int64)
        self.step = int(state["step"])
        self.loss_sum = float(state["loss_sum"])
        self.trained = int(state["trained"])
        self.epoch_seconds = float(state["epoch_seconds"])
        self.validated = bool(state["validated"])
        self.best_score = float(state["best_score"])
        self.best_epoch = int(state["best_epoch"])
        self.best_recall = state["best_recall"]
        self.bad_epochs = int(state["bad_epochs"])
        self.stopped_early = bool(state.get("stopped_early", False))
        self.history = [EpochReport(**r) for r in state["history"]]

    def save_checkpoint(self) -> Path:
        path = self.checkpoint_dir / checkpoint.LAST
        checkpoint.save(path, self.state_dict())
        return path

    def _save_best(self) -> None:
        state = {"format": checkpoint.FORMAT, "epoch": self.best_epoch, "model": self.trainable_state()}
        checkpoint.save(self.checkpoint_dir / checkpoint.BEST, state)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The parameters training changes. Frozen layers come back from the base model, and
        leaving them out keeps a VGG-16 checkpoint to the conv5 block instead of all of it."""
        return {name: p.detach().cpu().clone() for name, p in self.model.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = {name for name, p in self.model.named_parameters() if p.requires_grad}
        if set(state) != expected:
            raise checkpoint.CheckpointError(
                f"{self.checkpoint_dir}: the checkpoint trains other layers than this run "
                "(different --base or --train-layers?); start over with --restart"
            )
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))

    def best_state(self) -> dict[str, torch.Tensor]:
        """The trainable parameters of the best epoch (load with :meth:`load_trainable_state`)."""
        path = self.checkpoint_dir / checkpoint.BEST
        if path.is_file():
            return checkpoint.load(path)["model"]
        return self.trainable_state()

    def resume(self) -> None:
        self.load_state_dict(checkpoint.load(self.checkpoint_dir / checkpoint.LAST))

    # ---------------------------------------------------------------- the loop

    def _record(self, report: EpochReport) -> None:
        """Keep the best model (ties go to the later, longer-trained one) and count stale epochs."""
        if report.recall is not None:
            score = recall_score(report.recall)
        else:  # no validation: the lowest training objective wins
            score = -report.objective
        improved = score > self.best_score + 1e-12
        if score >= self.best_score - 1e-12:
            self.best_score = max(score, self.best_score)
            self.best_epoch = report.epoch
            self.best_recall = report.recall
            report.best = True
            self._save_best()
        self.bad_epochs = 0 if improved else self.bad_epochs + 1
        self.history.append(report)
        self.reporter.message(format_epoch(report, self.s.epochs))

    def run(self, *, validated: bool | None = None) -> TrainResult:
        """Train up to ``settings.epochs`` epochs in all (a resumed run counts the earlier ones)."""
        if validated is not None and not self.history:
            self.validated = validated
        handler_installed = False
        previous_handler = None
        if threading.current_thread() is threading.main_thread():
            def on_sigint(signum, frame):  # first Ctrl-C: stop cleanly; second: stop now
                if self._stop:
                    raise KeyboardInterrupt
                self._stop = True
                self.reporter.message("stopping: saving a checkpoint (Ctrl-C again to quit at once)")

            previous_handler = signal.signal(signal.SIGINT, on_sigint)
            handler_installed = True
        self.model.eval()
        try:
            try:
                self._run()
            except StopRequested:
                pass
            if self._stop:
                path = self.save_checkpoint()
                self.reporter.message(f"checkpoint saved to {path}; run again with --resume to continue")
                raise KeyboardInterrupt
        finally:
            if handler_installed:
                signal.signal(signal.SIGINT, previous_handler)
        return TrainResult(
            history=list(self.history),
            best_epoch=self.best_epoch,
            best_recall=self.best_recall,
            epochs_run=self.epoch,
            stopped_early=self.stopped_early,
            validated=self.validated,
            best_state=self.best_state(),
        )

    def _run(self) -> None:
        if not self.history:  # epoch 0: the starting model, the baseline every epoch must beat
            t0 = time.perf_counter()
            objective, recall = self._end_of_epoch_pass()
            self._record(EpochReport(0, None, objective, recall, self.optimizer.param_groups[0]["lr"], 0,
                                     len(self.tuples.queries), time.perf_counter() - t0))
            self.save_checkpoint()
        while self.epoch < self.s.epochs and not self.stopped_early:
            if self._stop:
                return
            self._run_epoch()

    def _run_epoch(self) -> None:
        epoch = self.epoch + 1
        n_queries = len(self.tuples.queries)
        if self.order is None:
            self.order = self.rng.permutation(n_queries)
            self.step = 0
            self.loss_sum = 0.0
            self.trained = 0
            self.epoch_seconds = 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        self.reporter.stage(f"epoch {epoch}/{self.s.epochs}", n_queries)
        self.reporter.advance(self.step, loss=self._mean_loss())
        try:
            while self.step < n_queries:
                if self._stop:
                    self.epoch_seconds += time.perf_counter() - t0
                    return
                cache = self.cache
                if cache is None or cache.due(self.s.cache_refresh):
                    self.reporter.end_stage()
                    desc = self._descriptors(self.train_idx, "refreshing mining cache")
                    self._ensure_cache(desc.shape[1]).update(desc)
                    self.reporter.stage(f"epoch {epoch}/{self.s.epochs}", n_queries)
                    self.reporter.advance(self.step, loss=self._mean_loss())
                ks = self.order[self.step:self.step + self.s.batch_size]
                loss_sum, trained = self._train_step(ks)
                self.loss_sum += loss_sum
                self.trained += trained
                self.step += len(ks)
                self.cache.queries_since_refresh += len(ks)  # type: ignore[union-attr]
                self.reporter.advance(len(ks), loss=self._mean_loss())
                if self.on_step is not None:
                    self.on_step(self)
        finally:
            self.reporter.end_stage()
        self.epoch_seconds += time.perf_counter() - t0
        t1 = time.perf_counter()
        # An interrupt inside this pass leaves step == n_queries: a resumed run redoes the pass.
        objective, recall = self._end_of_epoch_pass()
        seconds = self.epoch_seconds + time.perf_counter() - t1
        with warnings.catch_warnings():
            # An epoch in which no tuple violated the margin made no optimizer step; PyTorch then
            # warns that the schedule steps first. The schedule counts epochs, so that is right.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
            self.scheduler.step()
        self.epoch = epoch
        self.order = None
        self._record(EpochReport(epoch, self._mean_loss(), objective, recall, lr, self.trained, n_queries, seconds))
        if self.bad_epochs >= self.s.patience:
            self.stopped_early = True
            self.reporter.message(
                f"stopping early: no improvement for {self.bad_epochs} epochs (best: epoch {self.best_epoch})"
            )
        self.save_checkpoint()

    def _mean_loss(self) -> float:
        return self.loss_sum / self.trained if self.trained else 0.0

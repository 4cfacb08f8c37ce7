"""Descriptors from a Ray Data actor pool: one model per actor, batches streamed to the driver.

The driver lists the photos; Ray Data cuts the list into blocks of ``batch_size`` paths and hands
each block to an actor, which decodes and runs the network with the same
:class:`geoloc.descriptors.extract.Extractor` a local run uses (same preprocessing, batches of one tensor
shape, no padding), so a photo's descriptor does not depend on where it was computed. Blocks come
back as they finish (in any order) and the caller commits each one as it arrives: what the
cluster has computed is on disk batch by batch, as in a local run.

Paths travel as bytes (``os.fsencode``): a file name that is not UTF-8 survives the trip.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from geoloc.descriptors.cluster import RayConfig


class Describer:
    """A Ray actor's state: the model (moved to the actor's device once) and its extractor.

    Called with a block of paths; returns one row per path, an unusable photo included (its
    ``item`` carries the error), so that the driver reports every file exactly once.
    """

    def __init__(self, model, max_side: int, batch_size: int, workers: Optional[int], stride: float,
                 device: str, threads: int, precision: str = "auto"):
        import torch

        from geoloc.descriptors.extract import Extractor, default_workers, model_device
        from geoloc.models.registry import pick_device

        torch.set_num_threads(max(1, threads))
        self.model = model.to(pick_device(device)).eval()
        if workers is None:  # a GPU actor wants its decoding threads; a CPU actor has its share
            workers = default_workers(model_device(self.model)) if model_device(self.model) != "cpu" else 1
        self.extractor = Extractor.create(self.model, max_side=max_side, batch_size=batch_size,
                                          workers=workers, precision=precision)
        self.stride = stride

    def __call__(self, batch: dict) -> dict:
        from geoloc.retrieval.verify import stored_map

        keys = [bytes(k) for k in batch["path"]]
        done: dict[bytes, tuple] = {}
        dim = self.model.dim

        def failed(item) -> None:
            done[os.fsencode(item.path)] = (item, np.zeros(dim, np.float32), b"")

        fn = self.model.forward_with_map if self.stride else self.model
        for items, out in self.extractor.batches([Path(os.fsdecode(k)) for k in keys], fn, failed):
            desc, maps = out if self.stride else (out, None)
            desc = np.ascontiguousarray(desc.numpy(), dtype=np.float32)
            for i, item in enumerate(items):
                stored = pickle.dumps(stored_map(maps[i].numpy(), self.stride)) if maps is not None else b""
                done[os.fsencode(item.path)] = (item, desc[i], stored)
        rows = [done[k] for k in keys]
        return {
            "path": np.array(keys, dtype=object),
            "item": np.array([pickle.dumps(item) for item, _, _ in rows], dtype=object),
            "descriptor": np.stack([d for _, d, _ in rows]) if rows else np.zeros((0, dim), np.float32),
            "map": np.array([m for _, _, m in rows], dtype=object),
        }


def pool_size(ray, config: RayConfig, device: str) -> tuple[int, dict]:
    """Actors and what each asks of the cluster: a whole GPU when there are GPUs (and the device
    allows one), else ``cpus_per_worker`` CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if gpus and device != "cpu":
        return config.workers or gpus, {"num_gpus": 1, "num_cpus": config.cpus_per_worker}
    cpus = float(resources.get("CPU", 1))
    return config.workers or max(1, int(cpus // config.cpus_per_worker)), {"num_cpus": config.cpus_per_worker}


def ray_batches(
    ray,
    model,
    paths: Sequence[Path],
    *,
    max_side: int,
    batch_size: int,
    stride: float = 0.0,
    device: str = "auto",
    workers: Optional[int] = None,
    config: Optional[RayConfig] = None,
    on_error: Callable[[object], None] = lambda item: None,
    precision: str = "auto",
) -> Iterator[tuple[list, np.ndarray, Optional[list]]]:
    """Yield ``(photos, descriptors, stored maps or None)`` per block, as the cluster finishes
    them; unusable photos go to ``on_error``. ``stride``: the database's map stride (0: no maps);
    ``workers``: decoding threads per actor (None: 1 on a CPU actor, the GPU default on a GPU one).

    The model is sent to the actors once, through Ray's object store, from the CPU (the driver's
    copy is moved there): the workers need neither the weights files nor the registry entry.
    """
    config = config or RayConfig()
    if not paths:
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    actors, resources = pool_size(ray, config, device)
    actors = max(1, min(actors, math.ceil(len(paths) / batch_size)))
    dataset = ray.data.from_items([{"path": os.fsencode(p)} for p in paths],
                                  override_num_blocks=math.ceil(len(paths) / batch_size))
    dataset = dataset.map_batches(
        Describer,
        fn_constructor_kwargs={"model": model.cpu(), "max_side": max_side, "batch_size": batch_size,
                               "workers": workers, "stride": stride, "device": device,
                               "threads": max(1, int(config.cpus_per_worker)), "precision": precision},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors), **resources,
    )
    for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        items, rows, maps = [], [], []
        for raw, descriptor, stored in zip(block["item"], block["descriptor"], block["map"]):
            item = pickle.loads(raw)
            if item.error is not None:
                on_error(item)
                continue
            items.append(item)
            rows.append(descriptor)
            maps.append(pickle.loads(stored) if stored else None)
        if items:
            yield items, np.ascontiguousarray(np.stack(rows), dtype=np.float32), (maps if stride else None)

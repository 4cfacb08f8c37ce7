"""The one model-file format: safetensors tensors plus geoloc metadata describing the network.

Everything that writes a model (``geoloc finetune``, the conversion of a published NetVLAD
checkpoint) goes through :func:`write_model_file`, and everything that reads one through
:func:`read_model_file`, so a file written by either is loaded the same way. The metadata says
how to rebuild the network (``arch``, ``pooling``, ``num_clusters``, ``whiten_dim``,
``preprocess``, ``vocabulary``); other keys (``base``, ``source``, training settings) are
provenance for people and are carried along untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geoloc.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geoloc.models.model import GeolocModel

FORMAT_VERSION = "1"
#: What a reader needs to rebuild the network; a file without them is refused when written.
STRUCTURE_KEYS = ("arch", "pooling", "num_clusters", "whiten_dim", "preprocess", "vocabulary", "dim")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def write_model_file(tensors: dict[str, torch.Tensor], metadata: dict[str, Any], path: Path) -> Path:
    """Write tensors and metadata as a geoloc model file, atomically.

    Values that are not strings are stored as JSON (safetensors metadata is text only).
    """
    from safetensors.torch import save_file

    from geoloc.files import replacing

    missing = [k for k in STRUCTURE_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {', '.join(missing)}")
    meta = {str(k): _as_text(v) for k, v in metadata.items()}
    meta["geoloc_format"] = FORMAT_VERSION
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp), metadata=meta)
    return path


def save_model_file(model: GeolocModel, path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (weights as float32) with ``metadata`` added (``base``, ``description``,
    training settings…); the architecture keys always come from the model itself."""
    meta: dict[str, Any] = dict(metadata or {})
    config = model.config()
    meta.update({k: v for k, v in config.items() if k in STRUCTURE_KEYS or k not in meta})
    tensors = {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu()
        for k, v in model.state_dict().items()
    }
    return write_model_file(tensors, meta, path)


def read_model_metadata(path: Path) -> dict[str, str]:
    """The metadata of a geoloc model file; ModelError when it is not one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors model file ({exc})") from None
    if meta.get("geoloc_format") != FORMAT_VERSION:
        found = meta.get("geoloc_format")
        why = "no geoloc metadata" if found is None else f"geoloc_format {found!r}, expected {FORMAT_VERSION!r}"
        raise ModelError(f"{path}: not a geoloc model file ({why})")
    return meta


def read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a geoloc model file."""
    from safetensors.torch import load_file

    meta = read_model_metadata(path)
    try:
        return load_file(str(path)), meta
    except Exception as exc:
        raise ModelError(f"{path}: cannot read the weights ({exc})") from None


def runnable_weights(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The weights as geoloc runs them (float32), or :class:`ModelError` for weights that cannot
    give a descriptor: one NaN or infinity (a diverged training run, a damaged file) makes every
    descriptor NaN, and a database built on it answers nothing while looking sound.

    Half-precision files (fp16, bf16) are widened: every value of theirs is exact in float32.
    """
    import torch

    out = {}
    for name, tensor in state.items():
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise ModelError(f"{path}: weight {name} is {str(tensor.dtype).replace('torch.', '')}, "
                             "which geoloc cannot run; expected floating-point weights")
        if tensor.is_floating_point():
            if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                raise ModelError(f"{path}: weight {name} is {str(tensor.dtype).replace('torch.', '')}, "
                                 "which geoloc cannot run; expected float32, float16, bfloat16 or float64")
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise ModelError(f"{path}: weight {name} holds {bad:,} value{'s that are' if bad != 1 else ' that is'} "
                                 "not finite (NaN or infinity): the file is damaged or its training "
                                 "diverged; geoloc refuses it rather than store descriptors that match nothing")
            if tensor.dtype != torch.float32:
                tensor = tensor.float()
        out[name] = tensor
    return out


def load_model_file(path: Path, *, name: str | None = None, weights_hash: str | None = None) -> GeolocModel:
    """The network a model file describes, with its weights (eval mode, on the CPU).

    ``weights_hash`` identifies the weights in a database manifest; by default the file's
    sha256 (remembered by size and mtime, so a large file is hashed once).
    """
    import torch

    from geoloc.files import sha256_file_cached
    from geoloc.models.model import build_model, default_preprocess
    from geoloc.models.preprocess import Preprocess

    path = Path(path)
    state, meta = read_model_file(path)
    state = runnable_weights(state, path)
    try:
        arch = meta["arch"]
        pooling = meta["pooling"]
        num_clusters = int(meta.get("num_clusters") or 64)
        whiten_dim = int(meta.get("whiten_dim") or 0) or None
        preprocess = Preprocess.from_json(meta["preprocess"]) if meta.get("preprocess") else default_preprocess(arch)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelError(f"{path}: incomplete geoloc metadata ({exc})") from None
    # Built on the meta device and filled by assignment: no time spent initialising a
    # 134-million-weight whitening layer that the file overwrites anyway.
    with torch.device("meta"):
        model = build_model(
            arch, pooling, num_clusters=num_clusters, whiten_dim=whiten_dim,
            pretrained_backbone=False, train_layers="none", preprocess=preprocess,
        )
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelError(
            f"{path}: weights do not fit a {arch}/{pooling} model "
            f"(missing {', '.join(missing[:3]) or 'none'}; unexpected {', '.join(unexpected[:3]) or 'none'})"
        )
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except Exception as exc:
        raise ModelError(f"{path}: weights do not fit a {arch}/{pooling} model ({exc})") from None
    from geoloc.models.netvlad import NetVLAD

    if isinstance(model.pool, NetVLAD):  # a non-persistent buffer: not in the file
        model.pool.fitted = torch.tensor(meta.get("vocabulary") == "fitted")
    model.set_train_layers(meta.get("train_layers") or "last_block")
    model.name = name if name is not None else str(path)
    model.base = meta.get("base") or None
    model.weights_hash = weights_hash or sha256_file_cached(path)
    return model.eval()

"""Getting published NetVLAD weights into geoloc's one model-file format.

Downloads go through ``huggingface_hub`` (its cache, resumable, offline-aware). Each raw
checkpoint is converted once into a safetensors model file under ``weights_dir()``; from then on
geoloc loads only safetensors, or pickles with ``torch.load(weights_only=True)``, never arbitrary
code. Two layouts are understood:

* Patch-NetVLAD / pytorch-NetVlad ``.pth.tar``: ``{"num_pcs", "state_dict"}`` with
  ``encoder.0…28`` (torchvision VGG-16 up to conv5_3), ``pool.centroids`` (K×D),
  ``pool.conv.weight`` (K×D×1×1) and ``WPCA.0.weight/bias`` (OUT×K·D×1×1). Its NetVLAD vector is
  cluster-major (index k·D + d), like ours.
* The MATLAB release as hloc converts it (``*_struct.mat``): ``net.layers`` with VGG-16 convs
  stored S×S×IN×OUT, a ``vlad_core`` layer holding the assignment weights (D×K, α·centroids)
  and the negated centroids (D×K), and a ``WPCA`` conv 1×1×K·D×OUT whose input is flattened
  with the cluster index fastest (index d·K + k). Its input is RGB in 0–255 minus
  ``net.meta.normalization.averageImage``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from geoloc.env import offline
from geoloc.errors import ModelError, WeightsUnavailableError
from geoloc.files import sha256_file, sha256_file_cached
from geoloc.models.modelfile import write_model_file
from geoloc.models.preprocess import IMAGENET, Preprocess

# torchvision VGG-16 `features` indices of the 13 convolutions (conv1_1 … conv5_3).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_SHAPES = (
    (64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
    (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512),
)  # fmt: skip


# ------------------------------------------------------------------------------------------------
# Hugging Face Hub
# ------------------------------------------------------------------------------------------------


def hub_cache_dir() -> Path:
    """The Hugging Face cache as the environment says now (HF_HUB_CACHE, then HF_HOME/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.path.expandvars(os.environ["HF_HUB_CACHE"])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_cached_path(source) -> Path | None:
    """The cached raw checkpoint of ``source`` (a WeightsSource), or None; never touches the network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(
            source.repo_id, source.filename, cache_dir=str(hub_cache_dir()), revision=source.revision
        )
    except Exception:
        return None
    return Path(found) if isinstance(found, str) and os.path.isfile(found) else None


def hub_download(source, unavailable: str) -> Path:
    """The raw checkpoint of ``source``, from the cache or downloaded with a progress bar.

    ``unavailable`` is the one-line message for the offline case (it names the command to run
    and the offline model).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from geoloc import __version__
    from geoloc.console import download_bar_class

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, like the cache and offline flags
    if not offline() and hub_cached_path(source) is None and not _hub_reachable(endpoint):
        # huggingface_hub would retry for ~25 s, printing a line per try, before giving up.
        raise WeightsUnavailableError(unavailable)
    try:
        path = hf_hub_download(
            source.repo_id,
            source.filename,
            revision=source.revision,
            cache_dir=str(hub_cache_dir()),
            library_name="geoloc",
            library_version=__version__,
            local_files_only=offline(),
            endpoint=endpoint,
            tqdm_class=download_bar_class(),
        )
    except LocalEntryNotFoundError:
        raise WeightsUnavailableError(unavailable) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as exc:
        raise ModelError(f"{source.describe()}: not found on the Hugging Face Hub ({_first_line(exc)})") from None
    except HfHubHTTPError as exc:
        raise WeightsUnavailableError(f"{source.describe()}: download failed ({_first_line(exc)})") from None
    except OSError as exc:  # connection reset, disk full, permission denied
        raise WeightsUnavailableError(f"{source.describe()}: download failed ({_first_line(exc)})") from None
    path = Path(path)
    if source.sha256:
        digest = sha256_file(path)
        if digest != source.sha256.lower():
            raise ModelError(
                f"{path}: sha256 {digest} does not match the pinned {source.sha256} for "
                f"{source.describe()}; delete the file and download again"
            )
    return path


def _hub_reachable(endpoint: str | None, timeout_s: float = 5.0) -> bool:
    """Can a TCP connection to the Hub be opened at all? A fast answer for machines offline.

    Behind a proxy the direct connection says nothing, so the download is simply tried.
    """
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urlsplit(endpoint or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------------
# Conversion into geoloc model files
# ------------------------------------------------------------------------------------------------


def convert_cached(path: Path) -> Path:
    """Convert a ``.pth.tar``/``.mat`` given by path once, cached by its content hash."""
    from geoloc.paths import weights_dir

    path = Path(path)
    digest = sha256_file_cached(path)
    target = weights_dir() / "converted" / f"{digest[:32]}.safetensors"
    if target.is_file():
        return target
    return convert_checkpoint(path, target, base=path.name, extra={"source": str(path.resolve())}, source_sha256=digest)


def convert_checkpoint(
    src: Path,
    target: Path,
    *,
    base: str,
    extra: dict[str, Any] | None = None,
    source_sha256: str | None = None,
) -> Path:
    """Convert one checkpoint (``.mat`` or a torch pickle) into a geoloc model file at ``target``."""
    src = Path(src)
    if _is_mat(src):
        tensors, meta = read_mat_checkpoint(src)
    else:
        tensors, meta = read_torch_checkpoint(src)
    meta["base"] = base
    if source_sha256:
        meta["source_sha256"] = source_sha256
    meta.update(extra or {})
    return write_model_file(tensors, meta, target)


def _is_mat(path: Path) -> bool:
    if path.suffix.lower() == ".mat":
        return True
    with open(path, "rb") as f:
        head = f.read(128)
    return head.startswith(b"MATLAB") or head[:4] == b"\x89HDF"


def _netvlad_meta(k: int, local_dim: int, whiten_dim: int | None, preprocess: Preprocess) -> dict[str, str]:
    """The structure of a published VGG-16 NetVLAD network: trained centroids, conv5 trainable."""
    return {
        "arch": "vgg16",
        "pooling": "netvlad",
        "num_clusters": str(k),
        "whiten_dim": str(whiten_dim or 0),
        "preprocess": preprocess.to_json(),
        "vocabulary": "fitted",
        "dim": str(whiten_dim or k * local_dim),
        "train_layers": "last_block",
    }


def read_torch_checkpoint(path: Path) -> tuple[dict, dict[str, str]]:
    """Tensors (geoloc names, float32) and metadata from a Patch-NetVLAD/pytorch-NetVlad file."""
    import torch

    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:
        raise ModelError(
            f"{path}: cannot read as a PyTorch checkpoint with weights_only=True ({_first_line(exc)})"
        ) from None
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ModelError(f"{path}: no state_dict in this checkpoint")
    state = {(k.removeprefix("module.")): v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for i, (o, c) in zip(VGG16_CONV_INDICES, VGG16_CONV_SHAPES):
        w, b = state.get(f"encoder.{i}.weight"), state.get(f"encoder.{i}.bias")
        if w is None or b is None:
            raise ModelError(f"{path}: encoder.{i} missing; not a VGG-16 NetVLAD checkpoint")
        _expect(path, f"encoder.{i}.weight", w, (o, c, 3, 3))
        out[f"backbone.{i}.weight"] = w.float()
        out[f"backbone.{i}.bias"] = b.float()
    if "pool.conv.bias" in state:
        raise ModelError(f"{path}: NetVLAD with an assignment bias (vladv2) is not supported; use a vladv1 model")
    try:
        centroids, assign = state["pool.centroids"], state["pool.conv.weight"]
    except KeyError as exc:
        raise ModelError(f"{path}: {exc.args[0]} missing; not a NetVLAD checkpoint") from None
    k, d = centroids.shape
    _expect(path, "pool.conv.weight", assign, (k, d, 1, 1))
    out["pool.centroids"] = centroids.float()
    out["pool.conv.weight"] = assign.float()
    whiten_dim = None
    if "WPCA.0.weight" in state:
        w, b = state["WPCA.0.weight"], state["WPCA.0.bias"]
        whiten_dim = int(w.shape[0])
        _expect(path, "WPCA.0.weight", w, (whiten_dim, k * d, 1, 1))
        out["whiten.conv.weight"] = w.float()  # the real files store float64
        out["whiten.conv.bias"] = b.float()
        num_pcs = ckpt.get("num_pcs") if isinstance(ckpt, dict) else None
        if num_pcs is not None and int(num_pcs) != whiten_dim:
            raise ModelError(f"{path}: num_pcs {int(num_pcs)} disagrees with WPCA.0.weight ({whiten_dim} rows)")
    return out, _netvlad_meta(k, d, whiten_dim, IMAGENET)


def _expect(path: Path, name: str, tensor, shape: tuple) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise ModelError(f"{path}: {name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}")


def _weights_list(layer) -> list[np.ndarray]:
    w = getattr(layer, "weights", None)
    if w is None:
        return []
    if isinstance(w, np.ndarray) and w.dtype == object:
        return [np.asarray(x) for x in w.ravel()]
    if isinstance(w, (list, tuple)):
        return [np.asarray(x) for x in w]
    return [np.asarray(w)]  # a single array squeezed out of its cell


def read_mat_checkpoint(path: Path) -> tuple[dict, dict[str, str]]:
    """Tensors (geoloc names, float32) and metadata from an hloc-style MATLAB struct file."""
    import scipy.io
    import torch

    try:
        mat = scipy.io.loadmat(str(path), struct_as_record=False, squeeze_me=True)
        net = mat["net"]
        layers = np.atleast_1d(net.layers)
    except NotImplementedError:
        raise ModelError(f"{path}: MATLAB v7.3 (HDF5) files are not supported; save with -v7") from None
    except Exception as exc:
        raise ModelError(f"{path}: not a MATLAB NetVLAD struct file ({_first_line(exc)})") from None

    convs, vlad, wpca = [], None, None
    for layer in layers:
        kind = str(getattr(layer, "type", ""))
        name = str(getattr(layer, "name", ""))
        weights = _weights_list(layer)
        if name == "vlad_core":
            vlad = weights
        elif kind == "conv" and name == "WPCA":
            wpca = weights
        elif kind == "conv":
            convs.append((name, weights))
    if len(convs) != 13:
        raise ModelError(f"{path}: found {len(convs)} convolutions before NetVLAD, expected VGG-16's 13")
    out: dict[str, torch.Tensor] = {}
    for i, (o, c), (name, weights) in zip(VGG16_CONV_INDICES, VGG16_CONV_SHAPES, convs):
        if len(weights) != 2 or weights[0].ndim != 4:
            raise ModelError(f"{path}: layer {name} does not hold S×S×IN×OUT weights and a bias")
        w = torch.from_numpy(np.ascontiguousarray(weights[0], dtype=np.float32)).permute(3, 2, 0, 1)
        _expect(path, f"{name} weights", w, (o, c, 3, 3))
        out[f"backbone.{i}.weight"] = w.contiguous()
        out[f"backbone.{i}.bias"] = torch.from_numpy(np.asarray(weights[1], dtype=np.float32).reshape(-1))
    if not vlad or len(vlad) < 2:
        raise ModelError(f"{path}: no vlad_core layer with assignment weights and centroids")
    assign = np.asarray(vlad[0], dtype=np.float32).reshape(512, -1)  # D×K
    neg_centroids = np.asarray(vlad[1], dtype=np.float32).reshape(512, -1)  # D×K, stored negated
    d, k = assign.shape
    out["pool.conv.weight"] = torch.from_numpy(assign.T.copy())[:, :, None, None]
    out["pool.centroids"] = torch.from_numpy(-neg_centroids.T.copy())
    whiten_dim = None
    if wpca:
        w = np.asarray(wpca[0])
        w = w.reshape(k * d, -1)  # IN×OUT (the leading 1×1 may have been squeezed away)
        whiten_dim = int(w.shape[1])
        # MATLAB's IN index is d·K + k; ours is k·D + d.
        wt = torch.from_numpy(np.asarray(w, dtype=np.float32)).T.reshape(whiten_dim, d, k).transpose(1, 2)
        out["whiten.conv.weight"] = wt.reshape(whiten_dim, k * d, 1, 1).contiguous()
        out["whiten.conv.bias"] = torch.from_numpy(np.asarray(wpca[1], dtype=np.float32).reshape(-1))
    try:
        average = np.asarray(net.meta.normalization.averageImage, dtype=np.float64)
        mean = (
            tuple(float(v) for v in average.reshape(-1, 3)[0])
            if average.ndim > 1
            else tuple(float(v) for v in average[:3])
        )
    except AttributeError:
        raise ModelError(f"{path}: net.meta.normalization.averageImage missing") from None
    if len(mean) != 3:
        raise ModelError(f"{path}: averageImage does not hold an RGB mean")
    preprocess = Preprocess(mean=mean, std=(1.0, 1.0, 1.0), scale=255.0, max_side=640)  # type: ignore[arg-type]
    return out, _netvlad_meta(k, d, whiten_dim, preprocess)

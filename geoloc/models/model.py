"""`GeolocModel`: a backbone, a pooling layer and an optional whitening, with what it takes to
use them (preprocessing, identity, vocabulary) travelling along.

Everything a database or a fine-tuning run needs to know about a model is on this object, so
the rest of geoloc never branches on which network it is running.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch
import torch.nn.functional as F
from torch import nn

from geoloc.errors import ModelError
from geoloc.models.backbones import (
    ARCHS,
    OUT_CHANNELS,
    TRAIN_LAYERS,
    build_backbone,
    freeze_backbone,
)
from geoloc.models.netvlad import POOLINGS, NetVLAD, Whitening, build_pooling
from geoloc.models.preprocess import IMAGENET, LITE, Preprocess


def autocast(device_type: str, precision: str):
    """The context the trunk runs in: autocast to ``precision``, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type, dtype=dtype)


class GeolocModel(nn.Module):
    """images (B×3×H×W, normalised by ``preprocess``) → B×dim float32 unit-norm descriptors."""

    def __init__(
        self,
        backbone: nn.Module,
        pool: nn.Module,
        whiten: Whitening | None = None,
        *,
        arch: str,
        pooling: str,
        preprocess: Preprocess,
        name: str = "",
        weights_hash: str = "",
        train_layers: str = "last_block",
        base: str | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        self.whiten = whiten
        self.arch = arch
        self.pooling = pooling
        self.preprocess = preprocess
        self.name = name
        self.weights_hash = weights_hash
        self.train_layers = train_layers
        self.base = base
        #: How the trunk runs (set by :func:`geoloc.models.runtime.prepare` for a device):
        #: channels-last inputs, and the autocast precision ("fp32": none).
        self.channels_last = False
        self.precision = "fp32"
        #: Bytes of activation per input pixel at the backbone's widest layer, measured once
        #: (:func:`geoloc.models.runtime.activation_bytes`); None until then.
        self.activation_per_pixel: float | None = None
        self.eval()

    # -- shape ---------------------------------------------------------------------------------
    @property
    def local_dim(self) -> int:
        """Channels of the local features (the map the pooling sees)."""
        return self.pool.dim if isinstance(self.pool, NetVLAD) else self.pool.out_dim

    @property
    def num_clusters(self) -> int | None:
        return self.pool.num_clusters if isinstance(self.pool, NetVLAD) else None

    @property
    def whiten_dim(self) -> int | None:
        return self.whiten.out_dim if self.whiten is not None else None

    @property
    def dim(self) -> int:
        return self.whiten.out_dim if self.whiten is not None else self.pool.out_dim

    # -- inference -----------------------------------------------------------------------------
    def local_features(self, images: torch.Tensor) -> torch.Tensor:
        """B×C×h×w: what the pooling layer sees (k-means for the vocabulary samples these)."""
        return self._trunk(self.backbone, images)

    def _trunk(self, fn, images: torch.Tensor):
        """Run (part of) the backbone in the layout and precision set for this device; float32,
        contiguous results whatever ran inside (the pooling and the maps are computed in fp32)."""
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast(images.device.type, self.precision):
            out = fn(images)
        if isinstance(out, tuple):
            return tuple(t.float().contiguous() for t in out)
        return out.float().contiguous()

    def pool_features(self, features: torch.Tensor) -> torch.Tensor:
        """Local features → final descriptors (pooling, whitening, L2), for cached features."""
        if isinstance(self.pool, NetVLAD) and not self.has_vocabulary:
            raise ModelError(
                f"model {self.name or self.arch}: its NetVLAD vocabulary is not fitted yet "
                "(fit_vocabulary on the database photos, or load_vocabulary from the database)"
            )
        v = self.pool(features.float())
        if self.whiten is not None:
            v = self.whiten(v)
        return F.normalize(v.float(), p=2, dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool_features(self.local_features(images))

    def features_with_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The local features the pooling sees and, from the same pass, the dense map that
        geometric verification matches (about stride 16: VGG-16's conv5_3, Lite0's block 10)."""
        tapped = getattr(self.backbone, "features_and_tap", None)
        if tapped is not None:
            return self._trunk(tapped, images)
        features = self.local_features(images)
        return features, features

    def forward_with_map(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors and verification maps in one pass: re-ranking a query costs no second
        network pass."""
        features, tap = self.features_with_map(images)
        return self.pool_features(features), tap

    def map_geometry(self) -> tuple[int, int]:
        """(stride in input pixels, channels) of the verification map, measured once on a
        small input so that any backbone (a plug-in's too) answers the same way."""
        if getattr(self, "_map_geometry", None) is None:
            try:
                device = next(self.parameters()).device
            except StopIteration:
                device = torch.device("cpu")
            with torch.no_grad():
                _, tap = self.features_with_map(torch.zeros(1, 3, 128, 128, device=device))
            self._map_geometry = (max(1, round(128 / tap.shape[-1])), int(tap.shape[1]))
        return self._map_geometry

    # -- vocabulary (NetVLAD centroids fitted on the user's photos) ------------------------------
    @property
    def has_vocabulary(self) -> bool:
        """True when the pooling is ready: fitted NetVLAD centroids, or a pooling with none."""
        return bool(self.pool.fitted) if isinstance(self.pool, NetVLAD) else True

    @property
    def needs_vocabulary(self) -> bool:
        """NetVLAD centroids still to be fitted on real photos (the database's, or the training
        set's) before a descriptor means anything: the one definition of "needs fitting"."""
        return not self.has_vocabulary

    def mark_vocabulary_fitted(self) -> None:
        """Trained centroids were loaded into the layer by hand (a resumed fine-tuning run)."""
        if isinstance(self.pool, NetVLAD):
            self.pool.fitted.fill_(True)

    def fit_vocabulary(self, features: torch.Tensor, iterations: int = 50, seed: int = 0) -> float:
        """k-means on N×C local features; sets centroids and assignment weights; returns α."""
        if not isinstance(self.pool, NetVLAD):
            raise ModelError(f"model {self.name or self.arch}: {self.pooling} pooling has no vocabulary to fit")
        if features.ndim != 2 or features.shape[1] != self.pool.dim:
            raise ModelError(f"vocabulary features must be N×{self.pool.dim}, got {tuple(features.shape)}")
        device = self.pool.centroids.device
        alpha = self.pool.fit(features.cpu(), iterations=iterations, seed=seed)
        self.pool.to(device)
        return alpha

    def vocabulary_state(self) -> dict[str, torch.Tensor]:
        if not isinstance(self.pool, NetVLAD):
            return {}
        if not self.has_vocabulary:
            raise ModelError(f"model {self.name or self.arch}: no vocabulary fitted yet")
        return {
            "centroids": self.pool.centroids.detach().float().cpu().contiguous().clone(),
            "conv.weight": self.pool.conv.weight.detach().float().cpu().contiguous().clone(),
        }

    @torch.no_grad()
    def load_vocabulary(self, state: dict[str, torch.Tensor]) -> None:
        if not isinstance(self.pool, NetVLAD):
            raise ModelError(f"model {self.name or self.arch}: {self.pooling} pooling takes no vocabulary")
        try:
            centroids, weight = state["centroids"], state["conv.weight"]
        except KeyError as exc:
            raise ModelError(f"vocabulary lacks {exc.args[0]!r}") from None
        if tuple(centroids.shape) != tuple(self.pool.centroids.shape) or tuple(weight.shape) != tuple(
            self.pool.conv.weight.shape
        ):
            raise ModelError(
                f"vocabulary shapes {tuple(centroids.shape)}/{tuple(weight.shape)} do not fit this model "
                f"({tuple(self.pool.centroids.shape)}/{tuple(self.pool.conv.weight.shape)})"
            )
        self.pool.centroids.copy_(centroids)
        self.pool.conv.weight.copy_(weight)
        self.pool.fitted.fill_(True)

    def vocabulary_hash(self) -> str:
        """sha256 of the vocabulary tensors: two databases match only if this matches too."""
        h = hashlib.sha256()
        for key, tensor in sorted(self.vocabulary_state().items()):
            h.update(key.encode())
            h.update(tensor.numpy().tobytes())
        return h.hexdigest()

    # -- training --------------------------------------------------------------------------------
    def set_train_layers(self, train_layers: str) -> None:
        """Freeze the backbone but for ``train_layers``; the pooling layer stays trainable.

        The PCA whitening stays frozen: it is a statistic of the descriptors, not something the
        triplet loss should learn (134M weights for the Pitts30k 4096-D layer, on a user's few
        hundred photos). Refit it after training instead (``geoloc finetune --pca``).
        """
        freeze_backbone(self.arch, self.backbone, train_layers)
        if self.whiten is not None:
            for p in self.whiten.parameters():
                p.requires_grad_(False)
        self.train_layers = train_layers

    def train(self, mode: bool = True) -> GeolocModel:
        # Frozen batch-norm layers must keep their ImageNet statistics while the rest trains.
        super().train(mode)
        if mode:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in module.parameters()
                ):
                    module.eval()
        return self

    # -- description ------------------------------------------------------------------------------
    def config(self) -> dict[str, str]:
        """The architecture in words, as a model file stores it (:mod:`geoloc.models.modelfile`)."""
        return {
            "arch": self.arch,
            "pooling": self.pooling,
            "num_clusters": str(self.num_clusters or 0),
            "whiten_dim": str(self.whiten_dim or 0),
            "preprocess": self.preprocess.to_json(),
            "vocabulary": "fitted" if (isinstance(self.pool, NetVLAD) and self.has_vocabulary) else "none",
            "dim": str(self.dim),
            "train_layers": self.train_layers,
            "base": self.base or self.name or "",
        }

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, arch={self.arch}, pooling={self.pooling}"


def default_preprocess(arch: str) -> Preprocess:
    return LITE if arch == "lite0" else IMAGENET


def build_model(
    arch: str,
    pooling: str = "netvlad",
    num_clusters: int = 64,
    whiten_dim: int | None = None,
    pretrained_backbone: bool = True,
    train_layers: str = "last_block",
    *,
    preprocess: Preprocess | None = None,
    name: str = "",
) -> GeolocModel:
    """A new model: ImageNet backbone (if ``pretrained_backbone``), unfitted pooling.

    NetVLAD models come back with ``needs_vocabulary`` set: fit the centroids (k-means on local
    features of real photos) before use. ``whiten_dim`` adds a PCA layer, to be fitted or trained.
    """
    if arch not in ARCHS:
        raise ModelError(f"unknown backbone {arch!r}; choose one of {', '.join(ARCHS)}")
    if pooling not in POOLINGS:
        raise ModelError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    if train_layers not in TRAIN_LAYERS:
        raise ModelError(f"unknown train_layers {train_layers!r}; choose one of {', '.join(TRAIN_LAYERS)}")
    local = OUT_CHANNELS[arch]
    backbone = build_backbone(arch, pretrained=pretrained_backbone)
    pool = build_pooling(pooling, local, num_clusters)
    whiten = Whitening(pool.out_dim, int(whiten_dim)) if whiten_dim else None
    model = GeolocModel(
        backbone,
        pool,
        whiten,
        arch=arch,
        pooling=pooling,
        preprocess=preprocess or default_preprocess(arch),
        name=name,
        train_layers=train_layers,
    )
    model.set_train_layers(train_layers)
    return model

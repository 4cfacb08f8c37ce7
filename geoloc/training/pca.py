"""PCA whitening fitted on descriptors streamed in chunks.

The NetVLAD paper reduces its 32768-D VLAD vectors with PCA whitening (Pitts30k models: 4096-D).
The textbook route, a D×D covariance, needs 32768² float64 = 8 GiB before any
eigendecomposition, so neither route here ever forms it:

* ``gram`` (exact, used when N ≤ ``gram_max``): with fewer photos than dimensions the
  covariance has rank < N, and its eigenvectors are ``Xcᵀ v / √λ`` for the eigenpairs
  ``(λ, v)`` of the N×N Gram matrix ``Xc Xcᵀ``. The Gram matrix is built from pairs of row
  chunks, then one more pass projects the chunks. Memory: N² + D·dim float64 plus two chunks.
* ``randomized`` (large N): randomized subspace iteration (Halko, Martinsson & Tropp, 2011)
  with oversampling and power iterations, every product with ``Xc`` done chunk by chunk.
  Memory: (N + D)·(dim + oversample) float64 plus one chunk. When ``dim + oversample``
  reaches the rank of the data it is exact too.

The descriptors themselves are read from a (memory-mapped) N×D array one chunk at a time, so
they are never held twice, nor even once, in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from geoloc.errors import GeolocError


@dataclass
class PCAWhitening:
    """``y = diag(1/√(λ + eps)) · U (x − mean)``; rows of ``components`` are the unit directions."""

    mean: np.ndarray          # (D,)
    components: np.ndarray    # (dim, D)
    eigenvalues: np.ndarray   # (dim,), of the covariance (divided by N), descending
    method: str
    n_samples: int

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def weight_bias(self, eps: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A linear layer (as a 1×1 convolution in the Pitts WPCA layer): ``W x + b``.

        ``eps`` keeps near-zero eigenvalues from blowing the tail directions up; by default a
        millionth of the largest eigenvalue.
        """
        lam = self.eigenvalues.astype(np.float64)
        if eps is None:
            eps = 1e-6 * float(lam.max()) if lam.size and lam.max() > 0 else 1e-12
        scale = 1.0 / np.sqrt(np.maximum(lam, 0.0) + eps)
        weight = self.components * scale[:, None]
        bias = -weight @ self.mean
        return weight.astype(np.float32), bias.astype(np.float32)

    def transform(self, x: np.ndarray, normalize: bool = True) -> np.ndarray:
        weight, bias = self.weight_bias()
        y = np.asarray(x, dtype=np.float32) @ weight.T + bias
        if normalize:
            y /= np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)
        return y


def _chunks(n: int, rows: int):
    for start in range(0, n, rows):
        yield start, min(n, start + rows)


def _chunk_rows(d: int, budget_bytes: int) -> int:
    return max(1, budget_bytes // max(1, d * 8))


def check_enough_photos(dim: int, n: int) -> None:
    """PCA to ``dim`` directions needs more than ``dim`` photos; say so before any training."""
    if dim > n - 1:
        raise GeolocError(
            f"--pca {dim} needs at least {dim + 1} photos to estimate {dim} directions; "
            f"there are {n} (use a smaller --pca or more photos)"
        )


def fit_pca_whitening(
    x: np.ndarray,
    dim: int,
    *,
    method: Literal["auto", "gram", "randomized"] = "auto",
    gram_max: int = 8192,
    chunk_bytes: int = 256 << 20,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
) -> PCAWhitening:
    """Fit PCA whitening on the rows of ``x`` (N×D, typically an ``np.memmap``)."""
    n, d = x.shape
    if dim < 1:
        raise GeolocError(f"--pca must be at least 1, not {dim}")
    if dim > d:
        raise GeolocError(f"--pca {dim} is larger than the descriptor dimension {d}")
    check_enough_photos(dim, n)
    if method == "auto":
        method = "gram" if n <= gram_max else "randomized"
    rows = _chunk_rows(d, chunk_bytes)

    mean = np.zeros(d, dtype=np.float64)
    for a, b in _chunks(n, rows):
        mean += np.asarray(x[a:b], dtype=np.float64).sum(0)
    mean /= n

    def block(a: int, b: int) -> np.ndarray:
        rows = np.array(x[a:b], dtype=np.float64)  # the one float64 copy of this chunk
        rows -= mean
        return rows

    if method == "gram":
        components, eig = _fit_gram(block, n, d, dim, rows)
    elif method == "randomized":
        components, eig = _fit_randomized(block, n, d, dim, rows, oversample, power_iters, seed)
    else:
        raise ValueError(f"unknown PCA method {method!r}")
    return PCAWhitening(mean=mean, components=components, eigenvalues=eig / n, method=method, n_samples=n)


def _fit_gram(block, n: int, d: int, dim: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    # Two chunks in memory at a time, so halve the rows per chunk.
    rows = max(1, rows // 2)
    gram = np.zeros((n, n), dtype=np.float64)
    spans = list(_chunks(n, rows))
    for i, (a0, a1) in enumerate(spans):
        xa = block(a0, a1)
        for b0, b1 in spans[i:]:
            xb = xa if b0 == a0 else block(b0, b1)
            g = xa @ xb.T
            gram[a0:a1, b0:b1] = g
            gram[b0:b1, a0:a1] = g.T
    lam, vec = np.linalg.eigh(gram)
    del gram
    order = np.argsort(lam)[::-1][:dim]
    lam = np.maximum(lam[order], 0.0)
    vec = vec[:, order]
    u = np.zeros((d, dim), dtype=np.float64)
    for a0, a1 in spans:
        u += block(a0, a1).T @ vec[a0:a1]
    norms = np.linalg.norm(u, axis=0)
    u /= np.maximum(norms, 1e-300)
    return _orient(u.T), lam


def _fit_randomized(block, n: int, d: int, dim: int, rows: int, oversample: int, power_iters: int, seed: int):
    k = min(dim + max(0, oversample), n, d)
    rng = np.random.default_rng(seed)
    omega = rng.standard_normal((d, k))
    spans = list(_chunks(n, rows))

    def times(m: np.ndarray) -> np.ndarray:      # Xc @ m   (N×k)
        out = np.empty((n, m.shape[1]), dtype=np.float64)
        for a0, a1 in spans:
            out[a0:a1] = block(a0, a1) @ m
        return out

    def t_times(m: np.ndarray) -> np.ndarray:    # Xcᵀ @ m  (D×k)
        out = np.zeros((d, m.shape[1]), dtype=np.float64)
        for a0, a1 in spans:
            out += block(a0, a1).T @ m[a0:a1]
        return out

    q, _ = np.linalg.qr(times(omega))
    for _ in range(max(0, power_iters)):
        z, _ = np.linalg.qr(t_times(q))
        q, _ = np.linalg.qr(times(z))
    bt = t_times(q)                               # (Qᵀ Xc)ᵀ, D×k
    _, s, vt = np.linalg.svd(bt.T, full_matrices=False)
    return _orient(vt[:dim]), s[:dim] ** 2


def _orient(components: np.ndarray) -> np.ndarray:
    """Fix each direction's sign (largest entry positive) so fits are reproducible."""
    idx = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(len(components)), idx])
    signs[signs == 0] = 1.0
    return components * signs[:, None]


# ------------------------------------------------------------------------------------------------
# Whitening a trained model


class _Unwhitened:
    """The model's descriptor before any whitening layer: what PCA is fitted on."""

    def __init__(self, model):
        self.model = model
        self.dim = int(model.pool.out_dim)

    def __call__(self, images):
        import torch.nn.functional as F

        return F.normalize(self.model.pool(self.model.local_features(images)).float(), dim=1)


def attach_pca(model, images, config, ckpt_dir: Path, device, reporter) -> dict[str, Any]:
    """Fit PCA whitening on the training photos' descriptors and put it on the model.

    Descriptors go to a memory-mapped file in the checkpoint folder as they are computed, and
    the fit reads them back chunk by chunk (see :mod:`geoloc.training.pca`).
    """
    import shutil

    import torch

    from geoloc.models.netvlad import Whitening
    from geoloc.training.images import compute_descriptors

    model.to(device).eval()
    source = _Unwhitened(model)
    n, d = len(images), source.dim
    folder = ckpt_dir / "pca"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "descriptors.f32"
    matrix = np.memmap(path, dtype=np.float32, mode="w+", shape=(n, d))
    try:
        reporter.stage("descriptors for PCA", n)
        try:
            chunk = max(1, config.eval_batch_size) * 8
            for a in range(0, n, chunk):
                idx = list(range(a, min(n, a + chunk)))
                matrix[a:a + len(idx)] = compute_descriptors(
                    source, images, idx, device, batch_size=config.eval_batch_size, amp=config.amp, dim=d,
                ).numpy()
                reporter.advance(len(idx))
        finally:
            reporter.end_stage()
        matrix.flush()
        reporter.message(f"fitting PCA whitening {d} → {config.pca} on {n} descriptors")
        pca = fit_pca_whitening(matrix, int(config.pca), seed=config.seed)
    finally:
        del matrix
        shutil.rmtree(folder, ignore_errors=True)
    weight, bias = pca.weight_bias()
    whiten = Whitening(d, pca.dim)
    with torch.no_grad():
        whiten.conv.weight.copy_(torch.from_numpy(weight)[:, :, None, None])
        whiten.conv.bias.copy_(torch.from_numpy(bias))
    model.whiten = whiten.to(next(model.parameters()).device)
    return {"dim": pca.dim, "method": pca.method, "photos": n, "input_dim": d}

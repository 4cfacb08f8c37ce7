"""The weakly supervised triplet ranking loss of the NetVLAD paper (its equation 7).

The paper compares *squared* Euclidean distances and sums the hinge over all negatives of a
tuple; ``torch.nn.TripletMarginLoss`` uses plain distances and one negative, which changes what
the margin of 0.1 means, so the loss is written out here.
"""

from __future__ import annotations

import torch


def triplet_ranking_loss(
    query: torch.Tensor,
    positive: torch.Tensor,
    negatives: torch.Tensor,
    margin: float = 0.1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-tuple loss: sum over negatives of ``max(0, m + d²(q, p) - d²(q, n))``.

    ``query`` and ``positive`` are (B, D), ``negatives`` (B, K, D); ``mask`` (B, K) marks the
    real negatives when tuples have fewer than K (padding rows count for nothing). Returns (B,).
    """
    query = query.float()
    d_pos = (query - positive.float()).pow(2).sum(-1)
    d_neg = (query.unsqueeze(1) - negatives.float()).pow(2).sum(-1)
    hinge = torch.clamp(margin + d_pos.unsqueeze(1) - d_neg, min=0.0)
    if mask is not None:
        hinge = hinge * mask.to(hinge.dtype)
    return hinge.sum(1)

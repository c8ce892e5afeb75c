"""The Gatys loss in torch, traced once by autograd at export time.

One normalization, so that weights mean the same at every image size (deviation from the
paper, which uses sums that grow with the image):

- ``gram(F) = F F^T / M`` with M = h*w positions (the paper: ``F F^T``).
- content term per layer: ``mean((F - P)^2)`` over C*h*w (the paper: ``1/2 * sum``).
- style term per layer: ``mean((G - A)^2)`` over C*C. With the Gram divided by M this is exactly
  ``4 * E_l`` of the paper's eq. 4, so equal layer weights reproduce the paper's w_l = 1/5 up to 4.
- total variation (not in the paper; every serious implementation has it): the mean over pixels of
  squared horizontal and vertical differences of the [0, 1] RGB image. Squared rather than the L1 of
  neural-style, so that L-BFGS sees a smooth objective.

Spatial control (Gatys et al. 2017): each style k has a mask m_k resized to every layer; its Gram is
``(F m_k)(F m_k)^T / sum(m_k)``. With one all-ones mask this is the plain Gram above.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def gram(features: torch.Tensor) -> torch.Tensor:
    """[1, C, h, w] -> [C, C], divided by positions."""
    c = features.shape[1]
    f = features.reshape(c, -1)
    return f @ f.T / f.shape[1]


def masked_grams(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """features [1, C, h, w], masks [K, 1, H, W] (image size) -> [K, C, C]."""
    c, h, w = features.shape[1], features.shape[2], features.shape[3]
    m = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False)
    m = m.reshape(m.shape[0], 1, h * w)
    f = features.reshape(1, c, h * w) * m  # [K, C, M]
    area = m.sum(dim=2, keepdim=True).clamp_min(1e-6)  # [K, 1, 1]
    return f @ f.transpose(1, 2) / area


def content_loss(features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((features - target) ** 2).mean()


def style_loss(grams: torch.Tensor, targets: torch.Tensor, style_weights: torch.Tensor) -> torch.Tensor:
    """grams, targets [K, C, C]; style_weights [K] -> sum_k w_k * mean((G_k - A_k)^2)."""
    per_style = ((grams - targets) ** 2).mean(dim=(1, 2))
    return (per_style * style_weights).sum()


def tv_loss(image: torch.Tensor) -> torch.Tensor:
    dx = image[:, :, :, 1:] - image[:, :, :, :-1]
    dy = image[:, :, 1:, :] - image[:, :, :-1, :]
    return (dx**2).mean() + (dy**2).mean()

"""Color control (Gatys et al. 2017, "Controlling perceptual factors in neural style transfer")."""
from __future__ import annotations

import numpy as np

# RGB <-> YIQ (NTSC); Y is luminance, I and Q carry the color.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ).astype(np.float32)


def rgb_to_yiq(rgb: np.ndarray) -> np.ndarray:
    return rgb @ _RGB2YIQ.T


def yiq_to_rgb(yiq: np.ndarray) -> np.ndarray:
    return yiq @ _YIQ2RGB.T


def luminance(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> luminance replicated to three channels (what the network sees)."""
    y = rgb_to_yiq(rgb)[..., :1]
    return np.repeat(y, 3, axis=2)


def match_luminance(style: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Style luminance with the content's luminance mean and std (paper, sec. 3.1)."""
    ys, yc = rgb_to_yiq(style)[..., 0], rgb_to_yiq(content)[..., 0]
    y = (ys - ys.mean()) * (yc.std() / max(ys.std(), 1e-6)) + yc.mean()
    return np.repeat(y[..., None], 3, axis=2).astype(np.float32)


def recombine(stylized_luma: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Output luminance with the content's I and Q: the content's colors, the style's strokes."""
    yiq = rgb_to_yiq(content)
    yiq[..., 0] = rgb_to_yiq(stylized_luma)[..., 0]
    return yiq_to_rgb(yiq)


def _sqrtm(c: np.ndarray, inverse: bool = False) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    w = np.clip(w, 1e-8, None)
    return (v * (w ** (-0.5 if inverse else 0.5))) @ v.T


def match_histogram(style: np.ndarray, content: np.ndarray, clip: bool = False) -> np.ndarray:
    """Linear color transfer: style pixels get the content's mean and covariance (paper, sec. 3.1).

    Not clipped by default: the network takes values outside [0, 1], and clipping would undo part of
    the match (measured: covariance error 0.014 clipped vs 1e-6 unclipped for starry night -> coffee).
    """
    s = style.reshape(-1, 3).astype(np.float64)
    c = content.reshape(-1, 3).astype(np.float64)
    mu_s, mu_c = s.mean(0), c.mean(0)
    cov_s = np.cov(s, rowvar=False) + 1e-5 * np.eye(3)
    cov_c = np.cov(c, rowvar=False) + 1e-5 * np.eye(3)
    a = _sqrtm(cov_c) @ _sqrtm(cov_s, inverse=True)
    out = (s - mu_s) @ a.T + mu_c
    out = np.clip(out, 0.0, 1.0) if clip else out
    return out.reshape(style.shape).astype(np.float32)

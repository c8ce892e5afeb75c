"""Optical flow, warping, Ruder et al.'s consistency mask and Lai et al.'s warping error against
ground truth: a clip made from a still image with a known camera motion (pan and zoom) and a square
object sliding over it (nst_ort/media/video_synthetic.py), so that the true flow and the pixels that were
visible in the previous frame are known analytically."""
from __future__ import annotations

import numpy as np
import pytest

from nst_ort.media import flow as F
from nst_ort.media.images import load_image
from nst_ort.media.video_synthetic import camera_clip
from video_clips import needs

cv2 = needs("cv2")

SIZE = (160, 120)


@pytest.fixture(scope="module")
def clip(examples):
    return camera_clip(load_image(examples / "tuebingen_neckarfront.jpg"), SIZE, frames=4, pan=(2.5, 1.0),
                       zoom=1.01, obj=load_image(examples / "chelsea_cat.jpg"), obj_size=32, obj_velocity=(-3.0, 2.0))


def _away_from_edges(clip, t, margin):
    """Pixels at least `margin` px from the object's outline and from the frame's border."""
    obj = clip.object_mask[t].astype(np.uint8)
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    outline = cv2.dilate(obj, kernel) != cv2.erode(obj, kernel)
    inner = np.zeros(obj.shape, bool)
    inner[margin:-margin, margin:-margin] = True
    return inner & ~outline


def _clear(clip, t, margin):
    """Visible pixels of frame t away (by `margin` px) from the object's outline in frames t and t-1,
    from the border and from any occluded pixel: where interpolation and smoothing cannot blur."""
    h, w = clip.visible[t].shape
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    near_occluded = cv2.dilate((~clip.visible[t]).astype(np.uint8), kernel) > 0
    gx, gy = np.meshgrid(np.arange(w), np.arange(h))
    lx = np.clip(np.rint(gx + clip.backward[t][..., 0]), 0, w - 1).astype(int)
    ly = np.clip(np.rint(gy + clip.backward[t][..., 1]), 0, h - 1).astype(int)
    return (clip.visible[t] & ~near_occluded & _away_from_edges(clip, t, margin)
            & _away_from_edges(clip, t - 1, margin)[ly, lx])


def test_synthetic_clip_truth_is_consistent(clip):
    """The analytic flows agree with each other: following the backward flow then the forward flow
    comes back (visible pixels), and the clip really moves (else every test below is vacuous)."""
    for t in range(1, 4):
        b, f, vis = clip.backward[t], clip.forward[t], clip.visible[t]
        back, _ = F.warp(f, b)
        assert np.abs(b + back)[_clear(clip, t, 2)].max() < 1e-3
        assert np.sqrt((b ** 2).sum(-1)).mean() > 2.0  # pan 2.5 px, zoom 1 %, object 3.6 px
        assert 100 < (~vis).sum() < 0.2 * vis.size  # a strip at the border and the uncovered background


def test_warp_is_a_shift_for_integer_flow():
    rng = np.random.default_rng(0)
    img = rng.uniform(size=(20, 30, 3)).astype(np.float32)
    flow = np.zeros((20, 30, 2), np.float32)
    flow[..., 0], flow[..., 1] = 3, -2  # out(y, x) = img(y - 2, x + 3)
    out, inside = F.warp(img, flow)
    np.testing.assert_array_equal(out[2:, :-3], img[:-2, 3:])
    assert inside[2:, :-3].all() and not inside[:2].any() and not inside[:, -3:].any()


def test_warp_matches_opencv_remap(clip):
    """Fractional flow: our float64 bilinear against OpenCV's (fixed-point weights, 1/32 px)."""
    img, flow = clip.frames[0], clip.backward[1]
    ours, inside = F.warp(img, flow)
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    theirs = cv2.remap(img, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    assert np.abs(ours - theirs)[inside].max() < 0.02
    assert np.abs(ours - theirs)[inside].mean() < 1e-3


def test_consistency_rules_by_hand():
    """Each rule of the authors' consistencyChecker on flows whose answer is known (smoothing off)."""
    h, w = 16, 20
    back = np.zeros((h, w, 2), np.float32)
    back[..., 0] = 2.0  # every pixel of frame t was 2 px to the right in t-1
    fwd = -back  # and came back: consistent
    c = F.consistency(back, fwd, smooth=False)
    assert (c[:, : w - 2] == 1).all()  # interior
    assert (c[:, w - 2:] == 0).all()  # p + 2 leaves the image
    # a forward flow that does not return: |w_b + w_f|^2 = 16 >= 0.01 * 8 + 0.5 -> disocclusion
    assert (F.consistency(back, back.copy(), smooth=False) == 0).all()
    # a small round-trip error is tolerated: |0.6|^2 = 0.36 < 0.01 * (4 + 1.96) + 0.5
    assert (F.consistency(back, -back + 0.6 * np.array([1, 0], np.float32), smooth=False)[:, : w - 2] == 1).all()
    # a motion boundary (the flow jumps by 3 px between columns 9 and 10) with consistent flows
    back[:, 10:, 0] = 5.0
    fwd = np.zeros_like(back)
    fwd[..., 0] = -2.0
    fwd[:, 15:, 0] = -5.0  # where the right part lands in t-1
    c = F.consistency(back, fwd, smooth=False)
    assert (c[:, 9:11] == 0).all()  # |grad u|^2 = 1.5^2 > 0.01 |w|^2 + 0.002
    assert (c[:, :8] == 1).all() and (c[:, 12:14] == 1).all()
    # smoothing spreads disocclusions outwards and stays in [0, 1]
    cs = F.consistency(back, fwd)
    assert cs.min() >= 0 and cs.max() <= 1 and cs[:, 9:11].max() < 0.5


def test_consistency_of_the_true_flow_is_the_true_visibility(clip):
    for t in range(1, 4):
        c = F.consistency(clip.backward[t], clip.forward[t])
        vis = clip.visible[t]
        assert (c[~vis] < 0.5).mean() == 1.0  # every occluded pixel is masked out
        assert (c[_clear(clip, t, 2)] >= 0.5).mean() == 1.0


@pytest.mark.parametrize("method,max_epe,min_occluded,min_visible", [
    # measured at 160x120: DIS 0.40 px, 0.90, 0.915; Farneback 0.67 px, 0.74, 0.919
    ("dis", 0.6, 0.8, 0.85),
    ("farneback", 1.0, 0.6, 0.85),
])
def test_estimated_flow_and_mask_against_the_truth(clip, method, max_epe, min_occluded, min_visible):
    epe, occluded, visible = [], [], []
    for t in range(1, 4):
        a, b = clip.frames[t], clip.frames[t - 1]
        back, fwd = F.optical_flow(a, b, method), F.optical_flow(b, a, method)
        good = clip.visible[t] & _away_from_edges(clip, t, 6)
        epe.append(np.sqrt(((back - clip.backward[t]) ** 2).sum(-1))[good].mean())
        zero_epe = np.sqrt((clip.backward[t] ** 2).sum(-1))[good].mean()
        assert epe[-1] < 0.25 * zero_epe
        c = F.consistency(back, fwd)
        occluded.append((c[~clip.visible[t]] < 0.5).mean())
        visible.append((c[good] >= 0.5).mean())
    assert np.mean(epe) < max_epe
    assert np.mean(occluded) >= min_occluded
    assert np.mean(visible) >= min_visible


def test_warping_error_formula_by_hand():
    """Lai et al.: sum_p M(p) ||O_t(p) - warp(O_{t-1})(p)||^2 / sum_p M(p), channels summed."""
    prev = np.zeros((4, 5, 3))
    cur = np.zeros((4, 5, 3))
    cur[0, 0] = [0.1, 0.2, 0.2]  # squared norm 0.09
    cur[3, 4] = [1.0, 1.0, 1.0]  # 3.0, but masked out below
    mask = np.ones((4, 5))
    mask[3, 4] = 0
    flow = np.zeros((4, 5, 2))
    assert F.warping_error(cur, prev, flow, mask) == pytest.approx(0.09 / 19)
    # pixels whose warp leaves the frame never count: shift right by 1, column 4 is outside
    flow[..., 0] = 1.0
    assert F.warping_error(cur, prev, flow, mask) == pytest.approx(0.09 / 16)  # 20 pixels, 1 masked, 3 more outside
    assert F.warping_error(cur, prev, flow, np.zeros((4, 5))) == 0.0


def test_warping_error_with_the_true_flow_is_near_zero(clip):
    """Frames warped by the true flow: zero error exactly; the clip's own frames: ~0 with the true
    flow and mask (bilinear resampling only), far below no motion compensation and below the
    estimated flow's."""
    rng = np.random.default_rng(1)
    out_prev = rng.uniform(size=clip.frames[0].shape)
    for t in range(1, 4):
        b, vis = clip.backward[t], clip.visible[t]
        out_t, _ = F.warp(out_prev, b)  # an output that follows the motion exactly
        assert F.warping_error(out_t, out_prev, b, vis) < 1e-20
        e_true = F.warping_error(clip.frames[t], clip.frames[t - 1], b, vis)
        e_none = F.warping_error(clip.frames[t], clip.frames[t - 1], np.zeros_like(b), vis)
        assert e_true < 0.02 * e_none, (e_true, e_none)  # measured: 5e-5 against 1.3e-2
        back = F.optical_flow(clip.frames[t], clip.frames[t - 1])
        fwd = F.optical_flow(clip.frames[t - 1], clip.frames[t])
        e_est = F.warping_error(clip.frames[t], clip.frames[t - 1], back, F.consistency(back, fwd) >= 0.5)
        assert e_true < e_est < 0.1 * e_none

"""Pixel steps shared by every source: finiteness check, percentile scaling to 8 bit, crops and pads.

All functions take and return numpy arrays and never change their input. Images are (C, H, W) unless a
function says otherwise; coordinates are (y, x) in pixels of the array they index. Every step is
deterministic (float64 arithmetic, no threads), so the same input gives the same bytes on any worker.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

#: What to do with a crop box that reaches past the field: zero-pad it, move it inside, or drop the cell.
BorderPolicy = Literal["pad", "shift", "skip"]
BORDER_POLICIES: tuple[str, ...] = ("pad", "shift", "skip")


def check_finite(arr: np.ndarray, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when ``arr`` holds NaN or +-inf values (float inputs only)."""
    a = np.asarray(arr)
    if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.complexfloating):
        return  # integer images cannot hold NaN/inf
    bad = int(a.size - np.count_nonzero(np.isfinite(a)))
    if bad:
        raise ValueError(f"{where}: {bad} non-finite value(s) (NaN/inf) in an image of shape {a.shape}")


def _channel_view(arr: np.ndarray, axis: int | None) -> tuple[np.ndarray, int | None]:
    """Move the channel axis first: returns (array (C, ...), the axis it came from) or (arr, None)."""
    if axis is None:
        axis = 0 if arr.ndim == 3 else None
    if axis is None:
        return arr[None], None
    axis = axis % arr.ndim
    return np.moveaxis(arr, axis, 0), axis


#: integer images whose values lie in [0, this) take the histogram / lookup-table path (bincount and table
#: memory grow with the largest value: 2**22 values = 32 MiB of counts at most)
_HIST_LIMIT = 1 << 22


def _histogram_ok(flat: np.ndarray) -> bool:
    """True for unsigned 8/16-bit images, and for other integer images whose values are all in [0, 2**22)."""
    if flat.dtype in (np.uint8, np.uint16):
        return True
    if not np.issubdtype(flat.dtype, np.integer) or flat.size == 0:
        return False
    return int(flat.min()) >= 0 and int(flat.max()) < _HIST_LIMIT


def _clip_points(
    ch: np.ndarray, low_pct: float, high_pct: float, histogram: bool | None = None
) -> tuple[float, float, float, float]:
    """(low percentile, high percentile, min, max) of one channel, as ``np.percentile`` (linear) gives them.

    Unsigned images of up to 16 bits (and non-negative integer images below 2**22) go through a histogram
    (``bincount``): the k-th smallest value is read off the cumulative counts, then interpolated exactly like
    numpy's default method, at a fraction of the cost of the partial sort ``np.percentile`` does (the biggest
    single cost of scaling a WTC cell).
    """
    flat = ch.ravel()
    if histogram is None:
        histogram = _histogram_ok(flat)
    if histogram:  # the caller may have decided it already (it scans integer images for their range)
        counts = np.bincount(flat, minlength=1)
        cum = np.cumsum(counts)
        n = int(cum[-1])
        out = []
        for q in (low_pct, high_pct):
            pos = q / 100.0 * (n - 1)
            lo_i = int(np.floor(pos))
            hi_i = min(lo_i + 1, n - 1)
            v_lo = float(np.searchsorted(cum, lo_i, side="right"))  # value of the lo_i-th smallest (0-based)
            v_hi = float(np.searchsorted(cum, hi_i, side="right"))
            t, d = pos - lo_i, v_hi - v_lo
            out.append(v_hi - d * (1.0 - t) if t >= 0.5 else v_lo + d * t)  # numpy's own lerp, bit for bit
        nz = np.flatnonzero(counts)
        return out[0], out[1], float(nz[0]), float(nz[-1])
    f = flat.astype(np.float64)
    lo, hi = np.percentile(f, [low_pct, high_pct])
    return float(lo), float(hi), float(f.min()), float(f.max())


def to_uint8(
    arr: np.ndarray,
    low_pct: float = 0.0,
    high_pct: float = 100.0,
    axis: int | None = None,
    where: str = "image",
) -> np.ndarray:
    """Clip each channel to its [low_pct, high_pct] percentiles and scale linearly to uint8 [0, 255].

    ``axis`` is the channel axis, scaled independently per channel. ``None`` means axis 0 for a 3-D
    (C, H, W) array and one scaling for the whole array for any other rank. Percentiles are computed on
    the finite pixels (NaN/inf raise first, see :func:`check_finite`). When a channel's percentiles
    coincide (sparse signal) the channel's min/max are used instead; when the channel is truly constant
    the image carries no information and ``ValueError("constant image ...")`` is raised.
    Returns an array of the same shape, dtype uint8.
    """
    a = np.asarray(arr)
    if a.size == 0:
        raise ValueError(f"{where}: empty image of shape {a.shape}")
    if not 0.0 <= low_pct < high_pct <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low_pct}, {high_pct}")
    check_finite(a, where)
    chans, moved_from = _channel_view(a, axis)
    out = np.empty(chans.shape, dtype=np.uint8)
    for k in range(chans.shape[0]):
        ch = chans[k]
        histogram = _histogram_ok(ch.ravel())
        lo, hi, vmin, vmax = _clip_points(ch, low_pct, high_pct, histogram)
        if hi <= lo:
            lo, hi = vmin, vmax
        if hi <= lo:
            which = f" (channel {k})" if moved_from is not None else ""
            raise ValueError(f"constant image{which}: {where} has every pixel equal to {lo:g}")
        if histogram:
            # A lookup table over every value up to the channel's maximum: the same float64 formula, evaluated
            # once per value instead of once per pixel (a 16-bit field has far fewer values than pixels), same
            # bytes.
            values = np.arange(int(vmax) + 1, dtype=np.float64)
            out[k] = np.rint((np.clip(values, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)[ch]
        else:
            scaled = (np.clip(ch.astype(np.float64), lo, hi) - lo) * (255.0 / (hi - lo))
            out[k] = np.rint(scaled).astype(np.uint8)
    if moved_from is None:
        return out[0]
    return np.moveaxis(out, 0, moved_from)


def center_crop_or_pad(arr: np.ndarray, hw: tuple[int, int], fill: float = 0) -> np.ndarray:
    """Bring a (C, H, W) array to (C, *hw) around its centre without scaling.

    Larger dimensions are cropped, smaller ones padded with ``fill``; when the difference is odd the extra
    pixel goes to the bottom/right (crop) or bottom/right (pad), so the result is deterministic.
    """
    if arr.ndim != 3:
        raise ValueError(f"center_crop_or_pad expects (C, H, W), got shape {arr.shape}")
    th, tw = int(hw[0]), int(hw[1])
    _, h, w = arr.shape
    out = np.full((arr.shape[0], th, tw), fill, dtype=arr.dtype)
    # source window (crop) and destination offset (pad), per axis
    sy, dy, ny = _centre_window(h, th)
    sx, dx, nx = _centre_window(w, tw)
    out[:, dy : dy + ny, dx : dx + nx] = arr[:, sy : sy + ny, sx : sx + nx]
    return out


def _centre_window(size: int, target: int) -> tuple[int, int, int]:
    """(source start, destination start, length) that centres ``size`` pixels in ``target`` pixels."""
    if size >= target:
        return (size - target) // 2, 0, target
    return 0, (target - size) // 2, size


@dataclass(frozen=True)
class CropInfo:
    """Where a crop box landed in its field (pixel coordinates of the field, (y, x))."""

    top: int  #: first row of the box in the field (may be negative under the pad policy)
    left: int  #: first column of the box in the field
    touched_border: bool  #: the box centred on the cell reached past the field
    shift_y: int = 0  #: how far the shift policy moved the box (0 otherwise)
    shift_x: int = 0
    padded: bool = False  #: zero pixels were added (pad policy, or a field smaller than the box)
    policy: str = "pad"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def crop_box(
    arr: np.ndarray,
    center_yx: tuple[float, float],
    hw: tuple[int, int],
    policy: BorderPolicy = "pad",
    fill: float = 0,
) -> tuple[np.ndarray | None, CropInfo]:
    """Cut an (h, w) box centred on ``center_yx`` out of a (C, H, W) field.

    The box is ``[round(cy) - h//2, round(cy) - h//2 + h)`` (same for x). When it reaches past the field:

    - ``"pad"``: keep the box where it is and fill the missing pixels with ``fill`` (cell stays centred);
    - ``"shift"``: move the box inside the field (the cell is off-centre); a field smaller than the box is
      still padded;
    - ``"skip"``: return ``(None, info)``; the caller records the cell as skipped.

    Returns ``(crop (C, h, w) with the input dtype, CropInfo)``.
    """
    if policy not in BORDER_POLICIES:
        raise ValueError(f"unknown border policy {policy!r}; valid: {', '.join(BORDER_POLICIES)}")
    if arr.ndim != 3:
        raise ValueError(f"crop_box expects a (C, H, W) field, got shape {arr.shape}")
    h, w = int(hw[0]), int(hw[1])
    _, fh, fw = arr.shape
    # floor(x + 0.5) rather than Python's banker's rounding: a half-pixel centre always goes the same way
    top = int(np.floor(float(center_yx[0]) + 0.5)) - h // 2
    left = int(np.floor(float(center_yx[1]) + 0.5)) - w // 2
    touched = top < 0 or left < 0 or top + h > fh or left + w > fw
    if touched and policy == "skip":
        return None, CropInfo(top, left, True, policy=policy)
    shift_y = shift_x = 0
    if touched and policy == "shift":
        new_top = min(max(top, 0), max(fh - h, 0))
        new_left = min(max(left, 0), max(fw - w, 0))
        shift_y, shift_x = new_top - top, new_left - left
        top, left = new_top, new_left
    out = np.full((arr.shape[0], h, w), fill, dtype=arr.dtype)
    y0, y1 = max(top, 0), min(top + h, fh)
    x0, x1 = max(left, 0), min(left + w, fw)
    if y1 > y0 and x1 > x0:
        out[:, y0 - top : y1 - top, x0 - left : x1 - left] = arr[:, y0:y1, x0:x1]
    padded = (y1 - y0) < h or (x1 - x0) < w
    return out, CropInfo(top, left, touched, shift_y, shift_x, padded, policy)

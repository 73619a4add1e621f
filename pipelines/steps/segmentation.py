"""Single-cell segmentation of fluorescence fields: a registry of backends behind one function.

``segment(nucleus, cell_body, backend="watershed", **options)`` returns a :class:`Segmentation` with a cell
label image and (where the backend makes one) a nucleus label image, both (H, W) int32, 0 = background,
labels 1..N in raster order of the nuclei.

Backends (names are data: :data:`BACKENDS`, :func:`list_backends`):

- ``"watershed"`` (default, no weights, scikit-image only). Nuclei: per-image percentile normalisation,
  Gaussian smoothing, a global Otsu (or Li / local) threshold, hole filling, removal of objects smaller
  than a fraction of the typical nucleus, then a distance transform whose maxima (at least ~0.35 nucleus
  diameters apart) seed a watershed that splits touching nuclei. Cells: a seeded watershed from the nuclei
  on the inverted, smoothed cell-body image (mean of the normalised cytoplasmic channels, e.g. microtubules
  + ER + protein), restricted to a foreground mask (Li threshold of the cell-body image, united with the
  nuclei), so cells grow through bright cytoplasm and meet in the dim gaps between cells.
  Speed: the heavy steps run on a block-averaged copy of the field. With ``downsample="auto"`` the factor
  is chosen so that a typical nucleus is about ``target_diameter`` (24) pixels across; the nucleus size is
  estimated from a coarse (~256 px) Otsu pass, or given as ``nucleus_diameter`` (input pixels). Labels are
  upsampled back by nearest neighbour (pixel replication), so boundaries are quantised to the factor - fine
  for choosing crop centres, which is what the pipelines use them for.
- ``"cellpose"`` (optional extra ``pip install chammi[cellpose]``): runs a local Cellpose model file given
  as ``weights=PATH``. Never downloads: a missing path or package is a clear error naming it.

:func:`match_objects` scores a predicted label image against ground truth (object F1 at an IoU threshold);
``benchmarks/segmentation.py`` uses it on real annotated images.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage import filters, segmentation
from skimage.feature import peak_local_max


@dataclass
class Segmentation:
    """Label images of one field: ``cells`` and ``nuclei`` (H, W) int32, 0 = background (nuclei may be None).

    ``factor`` is the block size the heavy steps ran at (1 = full resolution).
    """

    cells: np.ndarray
    nuclei: np.ndarray | None
    factor: int = 1

    @property
    def count(self) -> int:
        return int(self.cells.max()) if self.cells.size else 0


Backend = Callable[..., Segmentation]
#: name -> backend function ``(nucleus (H, W), cell_body list of (H, W), **options) -> Segmentation``
BACKENDS: dict[str, Backend] = {}


def register_backend(name: str) -> Callable[[Backend], Backend]:
    """Decorator adding a backend to :data:`BACKENDS` under ``name``."""

    def deco(fn: Backend) -> Backend:
        BACKENDS[name] = fn
        return fn

    return deco


def list_backends() -> list[str]:
    return sorted(BACKENDS)


def segment(
    nucleus: np.ndarray,
    cell_body: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    backend: str = "watershed",
    **options: Any,
) -> Segmentation:
    """Segment one field into cells.

    ``nucleus`` is the (H, W) nuclear stain; ``cell_body`` one (H, W) image or a list of them (channels
    that fill the cytoplasm, e.g. microtubules, ER, protein), or None for nuclei only (cells = nuclei).
    Any numeric dtype; intensities are normalised per image. Unknown backend -> ``KeyError`` listing them.
    """
    if backend not in BACKENDS:
        raise KeyError(f"unknown segmentation backend {backend!r}; valid: {', '.join(list_backends())}")
    nuc = np.asarray(nucleus)
    if nuc.ndim != 2:
        raise ValueError(f"nucleus image must be 2-D (H, W), got shape {nuc.shape}")
    if cell_body is None:
        bodies: list[np.ndarray] = []
    elif isinstance(cell_body, np.ndarray) and cell_body.ndim == 2:
        bodies = [cell_body]
    else:
        bodies = [np.asarray(b) for b in cell_body]
    for b in bodies:
        if b.shape != nuc.shape:
            raise ValueError(
                f"cell-body image of shape {b.shape} does not match the nucleus image {nuc.shape}"
            )
    return BACKENDS[backend](nuc, bodies, **options)


# ----------------------------------------------------------------------------------------------- helpers


def _normalise(img: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """float32 image scaled so its [low, high] percentiles map to [0, 1] (clipped); constant -> zeros."""
    a = img.astype(np.float32, copy=False)
    lo, hi = np.percentile(a, [low, high])
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros_like(a, dtype=np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _block_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor`` x ``factor`` blocks, float32 (H', W') = ceil(H / factor), ceil(W / factor).

    Partial blocks at the bottom/right edge are averaged over the pixels they have (no zero padding, which
    would darken edge nuclei).
    """
    a = img.astype(np.float32, copy=False)
    if factor <= 1:
        return a
    h, w = a.shape
    sums = np.add.reduceat(
        np.add.reduceat(a, np.arange(0, h, factor), axis=0), np.arange(0, w, factor), axis=1
    )
    rows = np.minimum(factor, h - np.arange(0, h, factor)).astype(np.float32)
    cols = np.minimum(factor, w - np.arange(0, w, factor)).astype(np.float32)
    return sums / (rows[:, None] * cols[None, :])


def _upsample(labels: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a label image by pixel replication, cropped to ``shape``."""
    if factor <= 1:
        return labels
    return np.repeat(np.repeat(labels, factor, axis=0), factor, axis=1)[: shape[0], : shape[1]]


def _threshold(img: np.ndarray, method: str, block: int) -> np.ndarray:
    if method == "otsu":
        return img > filters.threshold_otsu(img)
    if method == "li":
        return img > filters.threshold_li(img)
    if method == "local":
        # local threshold for uneven illumination, but never below a global floor (dark background)
        block = block | 1
        return (img > filters.threshold_local(img, block_size=block, offset=0)) & (
            img > 0.5 * filters.threshold_otsu(img)
        )
    raise ValueError(f"unknown threshold method {method!r}; valid: otsu, li, local")


def estimate_nucleus_diameter(nucleus: np.ndarray, coarse_size: int = 256) -> float:
    """Typical nucleus diameter in input pixels: median equivalent diameter of Otsu components on a
    ~``coarse_size`` px block-averaged copy (objects touching each other count as one, which only
    overestimates slightly in dense fields). Returns 0.0 when nothing is found."""
    factor = max(1, max(nucleus.shape) // coarse_size)
    small = filters.gaussian(_normalise(_block_mean(nucleus, factor)), 1.0)
    if small.max() <= small.min():
        return 0.0
    fg = ndi.binary_fill_holes(small > filters.threshold_otsu(small))
    lab, n = ndi.label(fg)
    if n == 0:
        return 0.0
    areas = np.bincount(lab.ravel())[1:]
    areas = areas[areas >= 16]  # specks (hot pixels, noise) are not nuclei
    if areas.size == 0:
        return 0.0
    return float(np.sqrt(4.0 * np.median(areas) / np.pi) * factor)


def _split_nuclei(fg: np.ndarray, diameter: float, smooth: float) -> np.ndarray:
    """Label a binary nucleus mask, splitting touching nuclei by a distance-transform watershed."""
    comp, n = ndi.label(fg)
    if n == 0:
        return comp.astype(np.int32)
    dist = ndi.distance_transform_edt(fg).astype(np.float32)
    if smooth > 0:
        dist = filters.gaussian(dist, smooth)
    min_dist = max(2, int(round(0.35 * diameter)))
    peaks = peak_local_max(dist, min_distance=min_dist, labels=comp, exclude_border=False)
    markers = np.zeros(fg.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1, dtype=np.int32)
    # a component whose distance map has no strict maximum (plateau) still needs one seed
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[comp[peaks[:, 0], peaks[:, 1]]] = True
    nxt = len(peaks) + 1
    for lab in np.flatnonzero(~seeded[1:]) + 1:
        yx = ndi.maximum_position(dist, comp, lab)
        markers[int(yx[0]), int(yx[1])] = nxt
        nxt += 1
    return segmentation.watershed(-dist, markers, mask=fg).astype(np.int32)


def _drop_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Remove connected components with fewer than ``min_area`` pixels (own code: the scikit-image
    argument changed meaning between versions)."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    keep = np.bincount(lab.ravel()) >= min_area
    keep[0] = False
    return keep[lab]


def _drop_faint(labels: np.ndarray, img: np.ndarray, min_contrast: float) -> np.ndarray:
    """Zero the objects whose mean intensity is below background median + ``min_contrast`` robust sigmas
    (sigma = 1.4826 MAD of the background, floored at 1% of the normalised range)."""
    n = int(labels.max())
    if n == 0 or min_contrast <= 0:
        return labels
    bg = img[labels == 0]
    if bg.size == 0:
        return labels
    med = float(np.median(bg))
    sd = max(1.4826 * float(np.median(np.abs(bg - med))), 0.01)
    count = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    total = np.bincount(labels.ravel(), weights=img.ravel().astype(np.float64), minlength=n + 1)[1:]
    present = count > 0  # labels freed by earlier filtering have no pixels
    means = np.divide(total, count, out=np.zeros_like(total), where=present)
    faint = np.flatnonzero(present & (means < med + min_contrast * sd)) + 1
    if faint.size:
        labels = np.where(np.isin(labels, faint), 0, labels).astype(np.int32)
    return labels


def _relabel_raster(labels: np.ndarray) -> np.ndarray:
    """Renumber labels 1..N in raster order of their first pixel (deterministic, gap-free)."""
    flat = labels.ravel()
    ids, first = np.unique(flat, return_index=True)
    keep = ids != 0
    ids, first = ids[keep], first[keep]
    order = ids[np.argsort(first, kind="stable")]
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    lut[order] = np.arange(1, len(order) + 1, dtype=np.int32)
    return lut[labels]


# ------------------------------------------------------------------------------------------- watershed


@register_backend("watershed")
def watershed_backend(
    nucleus: np.ndarray,
    cell_body: list[np.ndarray],
    *,
    downsample: int | str = "auto",
    nucleus_diameter: float | None = None,
    target_diameter: float = 24.0,
    nucleus_threshold: str = "local",
    cell_threshold: str = "li",
    threshold_scale: float = 1.0,
    min_size_fraction: float = 0.15,
    sigma: float | None = None,
    min_contrast: float = 2.0,
) -> Segmentation:
    """Nuclei-seeded watershed (see the module docstring). Options:

    ``downsample``: block factor (int >= 1) or "auto"; ``nucleus_diameter``: typical nucleus diameter in
    input pixels (estimated when None); ``target_diameter``: nucleus size in working pixels for "auto";
    ``nucleus_threshold``: otsu | li | local; ``cell_threshold``: li | otsu | local;
    ``threshold_scale``: multiplies the nucleus threshold (< 1 keeps dimmer nuclei);
    ``min_size_fraction``: objects smaller than this fraction of a typical nucleus area are dropped;
    ``sigma``: Gaussian smoothing of the nucleus image in working pixels (default diameter / 16, >= 1);
    ``min_contrast``: a nucleus's mean intensity must exceed the background median by this many robust
    background standard deviations (rejects the blobs that thresholding finds in an empty, noisy field).
    """
    shape = nucleus.shape
    diam_in = float(nucleus_diameter) if nucleus_diameter else estimate_nucleus_diameter(nucleus)
    if downsample == "auto":
        factor = max(1, int(round(diam_in / target_diameter))) if diam_in > 0 else 1
    else:
        factor = int(downsample)
        if factor < 1:
            raise ValueError(f"downsample must be >= 1 or 'auto', got {downsample!r}")
    diam = diam_in / factor if diam_in > 0 else target_diameter

    nuc_raw = _normalise(_block_mean(nucleus, factor))
    nuc = filters.gaussian(nuc_raw, sigma if sigma is not None else max(1.0, diam / 16.0))
    if nuc.max() <= nuc.min():
        empty = np.zeros(shape, dtype=np.int32)
        return Segmentation(empty, empty.copy(), factor)
    if threshold_scale != 1.0 and nucleus_threshold in ("otsu", "li"):
        thr = filters.threshold_otsu(nuc) if nucleus_threshold == "otsu" else filters.threshold_li(nuc)
        fg = nuc > thr * threshold_scale
    else:
        fg = _threshold(nuc, nucleus_threshold, int(2 * diam + 1))
    fg = ndi.binary_fill_holes(fg)
    min_area = max(16, int(min_size_fraction * np.pi * (diam / 2.0) ** 2))
    fg = _drop_small(fg, min_area)
    nuclei = _split_nuclei(fg, diam, smooth=max(0.0, diam / 24.0))
    # drop split fragments that are still too small to be a nucleus
    areas = np.bincount(nuclei.ravel())
    small = np.flatnonzero(areas < min_area)
    if small.size > 1 or (small.size == 1 and small[0] != 0):
        nuclei[np.isin(nuclei, small[small != 0])] = 0
    nuclei = _drop_faint(nuclei, nuc_raw, min_contrast)
    nuclei = _relabel_raster(nuclei)

    if cell_body:
        body = np.mean([_normalise(_block_mean(b, factor)) for b in cell_body], axis=0)
        body = filters.gaussian(body, max(1.0, diam / 12.0))
        if body.max() > body.min():
            cell_fg = _threshold(body, cell_threshold, int(4 * diam + 1)) | (nuclei > 0)
            cell_fg = ndi.binary_fill_holes(cell_fg)
        else:
            cell_fg = nuclei > 0
        cells = segmentation.watershed(-body, nuclei, mask=cell_fg).astype(np.int32)
        # the nucleus always belongs to its own cell, whatever the cell-body landscape did
        cells[nuclei > 0] = nuclei[nuclei > 0]
    else:
        cells = nuclei.copy()
    return Segmentation(_upsample(cells, factor, shape), _upsample(nuclei, factor, shape), factor)


# -------------------------------------------------------------------------------------------- cellpose


@lru_cache(maxsize=4)
def _cellpose_model(weights: str) -> Any:
    from cellpose import models  # imported lazily: optional extra

    return models.CellposeModel(gpu=False, pretrained_model=weights)


@register_backend("cellpose")
def cellpose_backend(
    nucleus: np.ndarray,
    cell_body: list[np.ndarray],
    *,
    weights: str | Path | None = None,
    diameter: float | None = None,
) -> Segmentation:
    """Cellpose with a LOCAL model file ``weights`` (never downloaded). Nuclei are not returned."""
    if weights is None:
        raise ValueError(
            "the cellpose backend needs weights=PATH to a local Cellpose model file; "
            "it never downloads weights"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"cellpose weights file not found: {path} (pass weights=PATH to a local model "
            "file; the backend never downloads weights)"
        )
    try:
        import cellpose  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "the cellpose backend needs the optional extra: pip install 'chammi[cellpose]' "
            f"(importing cellpose failed: {err})"
        ) from err
    model = _cellpose_model(str(path))
    nuc = _normalise(nucleus)
    body = np.mean([_normalise(b) for b in cell_body], axis=0) if cell_body else nuc
    img = np.stack([body, nuc, np.zeros_like(nuc)], axis=-1)
    kwargs: dict[str, Any] = {"diameter": diameter, "channel_axis": -1}
    if "channels" in inspect.signature(model.eval).parameters:  # cellpose < 4: cytoplasm=1, nucleus=2
        kwargs["channels"] = [1, 2]
    masks = model.eval(img, **kwargs)[0]
    return Segmentation(_relabel_raster(np.asarray(masks, dtype=np.int32)), None, 1)


# ----------------------------------------------------------------------------------------------- scoring


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU of every ground-truth object (rows, labels 1..G) with every predicted object (cols, 1..P).

    Labels need not be consecutive: they are compacted first (row k = k-th smallest gt label).
    """
    if gt.shape != pred.shape:
        raise ValueError(f"label images differ in shape: ground truth {gt.shape}, prediction {pred.shape}")
    _, g = np.unique(gt, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    g = g.reshape(-1) + (0 if (gt == 0).any() else 1)  # 0 stays background
    p = p.reshape(-1) + (0 if (pred == 0).any() else 1)
    ng, npred = int(g.max()) + 1, int(p.max()) + 1
    inter = np.bincount(g * npred + p, minlength=ng * npred).reshape(ng, npred).astype(np.float64)
    area_g, area_p = inter.sum(1), inter.sum(0)
    inter = inter[1:, 1:]
    union = area_g[1:, None] + area_p[None, 1:] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_objects(gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict[str, float]:
    """Object-level precision, recall and F1: a prediction is a true positive when matched one-to-one
    (Hungarian assignment on IoU) to a ground-truth object with IoU >= ``iou_threshold`` (above 0.5
    the match is unique anyway). Returns ``tp, fp, fn, precision, recall, f1, mean_matched_iou``."""
    iou = iou_matrix(gt, pred)
    n_gt, n_pred = iou.shape
    tp, matched = 0, []
    if n_gt and n_pred:
        rows, cols = linear_sum_assignment(-iou)
        good = iou[rows, cols] >= iou_threshold
        tp = int(good.sum())
        matched = iou[rows, cols][good].tolist()
    fp, fn = n_pred - tp, n_gt - tp
    precision = tp / n_pred if n_pred else (1.0 if n_gt == 0 else 0.0)
    recall = tp / n_gt if n_gt else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "mean_matched_iou": float(np.mean(matched)) if matched else 0.0,
    }


def cell_properties(labels: np.ndarray) -> list[dict[str, Any]]:
    """Per label: ``label, centroid (y, x) float px, bbox (y0, x0, y1, x1), area px, touches_edge``.

    Uses ``ndimage.find_objects`` and per-box pixel lists (faster than regionprops on a 2048 px field).
    """
    h, w = labels.shape
    out = []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ys, xs = np.nonzero(labels[sl] == k)
        y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        out.append(
            {
                "label": k,
                "centroid": (float(ys.mean() + y0), float(xs.mean() + x0)),
                "bbox": (int(y0), int(x0), int(y1), int(x1)),
                "area": int(ys.size),
                "touches_edge": bool(y0 == 0 or x0 == 0 or y1 == h or x1 == w),
            }
        )
    return out

"""Thin-plate-spline (TPS) warp augmentation for (C, H, W) images of any channel count.

The warp is defined by a ``grid x grid`` lattice of control points spread evenly over the image, in the
normalised coordinates of :func:`torch.nn.functional.grid_sample` (x and y in [-1, 1], ``align_corners=False``
so -1 / 1 are the outer edges of the border pixels). Each control point ``c_i`` is displaced by ``d_i`` and
the warped image shows at ``c_i + d_i`` what the input showed at ``c_i``. We fit the *backward* map ``f(c_i +
d_i) = c_i`` with a TPS and sample the input at ``f(q)`` for every output pixel ``q``: one sampling grid for
all channels, so every channel gets the same warp.

Displacements are uniform in ``[-max_shift, max_shift]`` times the image size along each axis (0.1 = up to 10%
of the width horizontally, of the height vertically). Which points may move (``edges``):

- corners never move (the paper: "corners fixed");
- interior points move freely in x and y;
- edge points that are not corners (for the 3 x 3 grid: the four edge midpoints) are our choice, because the
  paper is silent. Default ``"tangential"``: they slide along their edge only, so the image border stays
  (close to) the border and the warp pulls in little empty padding. ``"free"`` moves them like interior
  points, ``"fixed"`` pins them like corners.

The TPS solve is done here in float64 with ``torch.linalg.solve`` (radial basis ``U(r) = r^2 log r^2``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

EDGE_MODES = ("tangential", "free", "fixed")


def control_points(grid: int = 3) -> torch.Tensor:
    """The undisplaced lattice: (grid*grid, 2) float64 (x, y) in [-1, 1], row-major (y outer, x inner)."""
    if grid < 2:
        raise ValueError(f"TPS control grid must be at least 2 x 2, got {grid}")
    axis = torch.linspace(-1.0, 1.0, grid, dtype=torch.float64)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def random_displacements(
    grid: int = 3,
    max_shift: float = 0.1,
    generator: torch.Generator | None = None,
    edges: str = "tangential",
) -> torch.Tensor:
    """Random control-point displacements, (grid*grid, 2) float64 in normalised units.

    ``max_shift`` is a fraction of the image size; the normalised image spans 2 units, so a point moves at
    most ``2 * max_shift`` units per axis. Corners get zero; edge points follow ``edges`` (see module
    docstring).
    """
    if edges not in EDGE_MODES:
        raise ValueError(f"unknown TPS edge mode {edges!r}; valid: {', '.join(EDGE_MODES)}")
    if not 0.0 <= max_shift < 0.5:
        raise ValueError(f"max_shift must be in [0, 0.5) (fraction of the image size), got {max_shift}")
    pts = control_points(grid)
    u = torch.rand(pts.shape, generator=generator, dtype=torch.float64)
    disp = (2.0 * u - 1.0) * (2.0 * max_shift)
    on_x_edge = pts[:, 0].abs() == 1.0  # left/right border: x is pinned
    on_y_edge = pts[:, 1].abs() == 1.0  # top/bottom border: y is pinned
    corner = on_x_edge & on_y_edge
    if edges == "tangential":
        disp[on_x_edge, 0] = 0.0
        disp[on_y_edge, 1] = 0.0
    elif edges == "fixed":
        disp[on_x_edge | on_y_edge] = 0.0
    disp[corner] = 0.0
    return disp


def _radial(d2: torch.Tensor) -> torch.Tensor:
    """TPS kernel U = r^2 log r^2 from squared distances, with U(0) = 0 (xlogy's convention)."""
    return torch.xlogy(d2, d2)


def fit_tps(
    centres: torch.Tensor, values: torch.Tensor, regularisation: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``f(centres[i]) = values[i]`` with a 2-D thin-plate spline.

    centres, values: (n, 2). Returns (weights (n, 2), affine (3, 2)) such that
    ``f(q) = U(|q - centres|) @ weights + [1, qx, qy] @ affine``. ``regularisation`` > 0 smooths instead of
    interpolating exactly. Raises ``ValueError`` when the centres are degenerate (e.g. all on one line).
    """
    c = centres.to(torch.float64)
    v = values.to(torch.float64)
    n = c.shape[0]
    if c.shape != (n, 2) or v.shape != (n, 2) or n < 3:
        raise ValueError(
            f"TPS needs (n, 2) centres and values with n >= 3, got {tuple(c.shape)} and {tuple(v.shape)}"
        )
    k = _radial(torch.cdist(c, c).square()) + regularisation * torch.eye(n, dtype=torch.float64)
    p = torch.cat([torch.ones(n, 1, dtype=torch.float64), c], dim=1)
    system = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    system[:n, :n] = k
    system[:n, n:] = p
    system[n:, :n] = p.T
    rhs = torch.cat([v, torch.zeros(3, 2, dtype=torch.float64)], dim=0)
    try:
        sol = torch.linalg.solve(system, rhs)
    except RuntimeError as exc:  # singular: collinear or repeated centres
        raise ValueError(f"TPS system is singular for these control points ({exc})") from None
    return sol[:n], sol[n:]


def evaluate_tps(
    points: torch.Tensor, centres: torch.Tensor, weights: torch.Tensor, affine: torch.Tensor
) -> torch.Tensor:
    """Evaluate a fitted TPS at ``points`` (m, 2) -> (m, 2), float64."""
    q = points.to(torch.float64)
    u = _radial(torch.cdist(q, centres.to(torch.float64)).square())
    return u @ weights + affine[0] + q @ affine[1:]


def pixel_centres(height: int, width: int) -> torch.Tensor:
    """(height, width, 2) float64 (x, y) normalised coordinates of pixel centres (``align_corners=False``)."""
    xs = (2.0 * torch.arange(width, dtype=torch.float64) + 1.0) / width - 1.0
    ys = (2.0 * torch.arange(height, dtype=torch.float64) + 1.0) / height - 1.0
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def tps_sampling_grid(
    height: int, width: int, source: torch.Tensor, target: torch.Tensor, step: int = 1
) -> torch.Tensor:
    """The ``grid_sample`` grid (height, width, 2) that moves ``source`` points (n, 2) to ``target`` points.

    For every output pixel q the grid holds f(q), where f is the TPS with f(target_i) = source_i.
    ``step`` > 1 evaluates f exactly on a lattice about every ``step`` pixels (first and last pixel centres
    included) and fills the pixels between by bilinear interpolation. f is smooth away from the control
    points; measured worst error for a 3 x 3 grid with 10% shifts: step 4 < 0.15 px (100 x 140 image),
    < 0.04 px (512 x 512); step 8 about 3x that. Cost of the spline evaluation drops by ~step^2.
    """
    weights, affine = fit_tps(target, source)
    ny = height if step <= 1 else min(height, -(-(height - 1) // step) + 1)
    nx = width if step <= 1 else min(width, -(-(width - 1) // step) + 1)
    full = pixel_centres(height, width)
    if (ny, nx) == (height, width):
        return evaluate_tps(full.reshape(-1, 2), target, weights, affine).reshape(height, width, 2)
    # Coarse lattice spanning the outermost pixel centres, so align_corners=True interpolation is exact
    # at the lattice nodes and linear in between.
    ys = torch.linspace(float(full[0, 0, 1]), float(full[-1, 0, 1]), ny, dtype=torch.float64)
    xs = torch.linspace(float(full[0, 0, 0]), float(full[0, -1, 0]), nx, dtype=torch.float64)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    coarse = evaluate_tps(torch.stack([gx, gy], dim=-1).reshape(-1, 2), target, weights, affine)
    coarse = coarse.reshape(ny, nx, 2).permute(2, 0, 1)[None]
    dense = F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=True)
    return dense[0].permute(1, 2, 0)


def warp_image(
    image: torch.Tensor,
    displacements: torch.Tensor,
    grid: int | None = None,
    padding_mode: str = "zeros",
    step: int = 4,
) -> torch.Tensor:
    """Warp a (C, H, W) float image by control-point ``displacements`` (grid*grid, 2); same warp for all
    channels.

    ``padding_mode`` is passed to ``grid_sample``: ``zeros`` (default) fills pulled-in area with 0, which is
    the dark background of fluorescence images before normalisation. ``step``: see :func:`tps_sampling_grid`
    (1 = evaluate the spline at every pixel).
    """
    if image.ndim != 3:
        raise ValueError(f"TPS warp expects a (C, H, W) image, got shape {tuple(image.shape)}")
    n = displacements.shape[0]
    g = grid if grid is not None else round(n**0.5)
    if g * g != n:
        raise ValueError(f"{n} displacements do not form a square control grid")
    src = control_points(g)
    sampling = tps_sampling_grid(
        image.shape[1], image.shape[2], src, src + displacements.to(torch.float64), step
    )
    dtype = image.dtype if image.is_floating_point() else torch.float32
    out = F.grid_sample(
        image[None].to(dtype),
        sampling[None].to(device=image.device, dtype=dtype),
        mode="bilinear",
        padding_mode=padding_mode,
        align_corners=False,
    )
    return out[0]


class ThinPlateSpline:
    """Sample transform: with probability ``p``, TPS-warp ``sample["image"]`` (C, H, W), all channels alike.

    ``grid``: control lattice size (3 -> 3 x 3); ``max_shift``: maximal displacement as a fraction of the
    image size; ``edges``: how non-corner border points move (``tangential`` | ``free`` | ``fixed``);
    ``step``: spline evaluated every ``step`` pixels, interpolated between (1 = exact). Apply it
    before cropping, on [0, 1] images, as in the paper. Pass a seeded ``generator`` for reproducible warps.
    """

    def __init__(
        self,
        p: float = 0.5,
        grid: int = 3,
        max_shift: float = 0.1,
        edges: str = "tangential",
        padding_mode: str = "zeros",
        step: int = 4,
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"probability p must be in [0, 1], got {p}")
        if edges not in EDGE_MODES:
            raise ValueError(f"unknown TPS edge mode {edges!r}; valid: {', '.join(EDGE_MODES)}")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}; valid: zeros, border, reflection")
        control_points(grid)  # validates grid
        self.p, self.grid, self.max_shift, self.edges, self.padding_mode = (
            p,
            grid,
            max_shift,
            edges,
            padding_mode,
        )
        self.step = max(1, int(step))

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        # The coin comes from the generator too, so whether a sample is warped is reproducible.
        if self.p <= 0.0 or torch.rand((), generator=generator).item() >= self.p:
            return sample
        disp = random_displacements(self.grid, self.max_shift, generator, self.edges)
        image = torch.as_tensor(sample["image"])
        out = dict(sample)
        out["image"] = warp_image(image, disp, self.grid, self.padding_mode, self.step)
        return out

    def __repr__(self) -> str:
        return (
            f"ThinPlateSpline(p={self.p}, grid={self.grid}, max_shift={self.max_shift}, "
            f"edges={self.edges!r}, padding_mode={self.padding_mode!r}, step={self.step})"
        )

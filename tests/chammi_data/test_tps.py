"""Thin-plate-spline warp: the solve, the displacement rules and the sample transform."""

from __future__ import annotations

import pytest
import torch

from chammi_data.augment.tps import (
    ThinPlateSpline,
    control_points,
    evaluate_tps,
    fit_tps,
    pixel_centres,
    random_displacements,
    tps_sampling_grid,
    warp_image,
)


def test_control_points_lattice():
    pts = control_points(3)
    assert pts.shape == (9, 2)
    assert set(pts[:, 0].tolist()) == {-1.0, 0.0, 1.0}
    assert pts[4].tolist() == [0.0, 0.0]  # row-major: the centre is index 4
    with pytest.raises(ValueError):
        control_points(1)


def test_fit_interpolates_centres_and_reproduces_affine_maps():
    g = torch.Generator().manual_seed(0)
    centres = torch.rand(9, 2, generator=g, dtype=torch.float64) * 2 - 1
    values = torch.rand(9, 2, generator=g, dtype=torch.float64) * 2 - 1
    w, a = fit_tps(centres, values)
    assert torch.allclose(evaluate_tps(centres, centres, w, a), values, atol=1e-9)
    # An affine target must be reproduced exactly with zero bending weights, everywhere.
    m = torch.tensor([[1.1, 0.2], [-0.3, 0.9]], dtype=torch.float64)
    t = torch.tensor([0.05, -0.1], dtype=torch.float64)
    w, a = fit_tps(centres, centres @ m + t)
    assert w.abs().max() < 1e-9
    q = torch.rand(50, 2, generator=g, dtype=torch.float64) * 2 - 1
    assert torch.allclose(evaluate_tps(q, centres, w, a), q @ m + t, atol=1e-9)


def test_fit_rejects_degenerate_centres():
    line = torch.stack([torch.linspace(-1, 1, 5), torch.zeros(5)], dim=1).double()
    with pytest.raises(ValueError, match="singular"):
        fit_tps(line, line)


def test_zero_displacement_is_identity():
    img = torch.rand(5, 17, 23, generator=torch.Generator().manual_seed(1))
    out = warp_image(img, torch.zeros(9, 2))
    assert torch.allclose(out, img, atol=1e-5)


@pytest.mark.parametrize("edges", ["tangential", "free", "fixed"])
def test_displacement_rules(edges):
    pts = control_points(3)
    d = random_displacements(3, 0.1, torch.Generator().manual_seed(3), edges=edges)
    corner = (pts.abs() == 1).all(dim=1)
    x_edge = (pts[:, 0].abs() == 1) & ~corner
    y_edge = (pts[:, 1].abs() == 1) & ~corner
    interior = ~(corner | x_edge | y_edge)
    assert (d[corner] == 0).all()
    assert d.abs().max() <= 0.2 + 1e-12  # 10% of the 2-unit normalised extent
    assert (d[interior] != 0).all()
    if edges == "tangential":
        assert (d[x_edge, 0] == 0).all() and (d[x_edge, 1] != 0).all()
        assert (d[y_edge, 1] == 0).all() and (d[y_edge, 0] != 0).all()
    elif edges == "fixed":
        assert (d[x_edge | y_edge] == 0).all()
    else:
        assert (d[x_edge | y_edge] != 0).all()


def test_warp_moves_content_with_the_control_point():
    # Image value = normalised x coordinate; move the centre control point right by 0.2.
    h = w = 65
    img = pixel_centres(h, w)[..., 0].float()[None]
    disp = torch.zeros(9, 2, dtype=torch.float64)
    disp[4, 0] = 0.2
    out = warp_image(img, disp)
    # Output pixel at x = +0.2 on the centre row shows what the input had at x = 0.
    col = int(round((0.2 + 1) * w / 2 - 0.5))
    assert abs(out[0, h // 2, col].item() - 0.0) < 0.02
    # The backward map sends every displaced control point to its origin; corners stay put.
    src = control_points(3)
    wts, aff = fit_tps(src + disp, src)
    assert torch.allclose(evaluate_tps(src + disp, src + disp, wts, aff), src, atol=1e-9)
    corners = src[(src.abs() == 1).all(dim=1)]
    assert torch.allclose(evaluate_tps(corners, src + disp, wts, aff), corners, atol=1e-9)
    grid = tps_sampling_grid(h, w, src, src + disp)
    assert grid.shape == (h, w, 2)
    assert abs(grid[h // 2, col, 0].item()) < 0.02


def test_coarse_grid_matches_exact_spline():
    src = control_points(3)
    tgt = src + random_displacements(3, 0.1, torch.Generator().manual_seed(9), edges="free")
    exact = tps_sampling_grid(100, 140, src, tgt, step=1)
    coarse = tps_sampling_grid(100, 140, src, tgt, step=4)
    # Max error in pixels (normalised unit = size / 2 pixels) stays far below one pixel.
    err_px = ((coarse - exact).abs() * torch.tensor([140 / 2, 100 / 2], dtype=torch.float64)).max()
    assert 0 < err_px < 0.2
    # Lattice nodes (here the first pixel centre) are exact.
    assert torch.allclose(
        tps_sampling_grid(7, 9, src, tgt, step=8)[0, 0], tps_sampling_grid(7, 9, src, tgt)[0, 0], atol=1e-12
    )


def test_same_warp_for_every_channel():
    base = torch.rand(1, 20, 30, generator=torch.Generator().manual_seed(4))
    img = base.repeat(6, 1, 1)
    out = ThinPlateSpline(p=1.0)({"image": img, "cell_id": "x"}, generator=torch.Generator().manual_seed(5))[
        "image"
    ]
    assert out.shape == img.shape
    assert not torch.allclose(out, img)
    for c in range(1, 6):
        assert torch.equal(out[c], out[0])


def test_transform_probability_and_determinism():
    sample = {"image": torch.rand(3, 24, 24, generator=torch.Generator().manual_seed(6)), "cell_id": "a"}
    assert ThinPlateSpline(p=0.0)(sample, generator=torch.Generator().manual_seed(0)) is sample
    tps = ThinPlateSpline(p=1.0)
    a = tps(sample, generator=torch.Generator().manual_seed(7))["image"]
    b = tps(sample, generator=torch.Generator().manual_seed(7))["image"]
    c = tps(sample, generator=torch.Generator().manual_seed(8))["image"]
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert sample["image"].shape == (3, 24, 24)  # input untouched
    half = ThinPlateSpline(p=0.5)
    warped = sum(half(sample, generator=torch.Generator().manual_seed(s)) is not sample for s in range(80))
    assert 20 < warped < 60


def test_transform_validates_arguments():
    with pytest.raises(ValueError):
        ThinPlateSpline(p=1.5)
    with pytest.raises(ValueError, match="edge mode"):
        ThinPlateSpline(edges="wobbly")
    with pytest.raises(ValueError):
        random_displacements(3, 0.7)
    with pytest.raises(ValueError, match="C, H, W"):
        warp_image(torch.zeros(4, 4), torch.zeros(9, 2))

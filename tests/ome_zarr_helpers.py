"""Check a release's zarr stores with the real third-party OME-Zarr clients (not with our own reader)."""

from __future__ import annotations

from pathlib import Path

import zarr
from ome_zarr.io import parse_url  # third-party clients: the dev extra installs them
from ome_zarr.reader import Multiscales, Reader
from ome_zarr_models.v05.image import Image

from chammi_data.format.manifest import read_manifest, source_rows, sources_in
from chammi_data.format.release_format import parse_channels
from chammi_data.format.zarr_store import zarr_path


def check_ome_zarr_store(store: Path, channels: tuple[str, ...], n_cells: int) -> None:
    """``store`` validates as an OME-Zarr 0.5 Image (ome-zarr-models) and the ome-zarr reader finds one image
    node with ``channels`` as channel names and an (N, C, H, W) pixel array."""
    image = Image.from_zarr(zarr.open_group(str(store), mode="r"))
    (multiscale,) = image.ome_attributes.multiscales
    assert [a.name for a in multiscale.axes] == ["cell", "c", "y", "x"]
    assert [d.path for d in multiscale.datasets] == ["images"]

    location = parse_url(str(store))
    assert location is not None, f"ome-zarr does not recognise {store}"
    nodes = [n for n in Reader(location)() if n.load(Multiscales) is not None]
    assert len(nodes) == 1, f"ome-zarr found {len(nodes)} image nodes in {store}"
    node = nodes[0]
    assert tuple(node.metadata["channel_names"]) == channels
    assert [a["name"] for a in node.metadata["axes"]] == ["cell", "c", "y", "x"]
    assert node.data[0].shape[:2] == (n_cells, len(channels))


def check_release_ome_zarr(root: Path) -> list[str]:
    """:func:`check_ome_zarr_store` on every source's store of the release at ``root``; returns the
    sources."""
    manifest = read_manifest(root)
    sources = sources_in(manifest)
    for source in sources:
        rows = source_rows(manifest, source)
        check_ome_zarr_store(zarr_path(root, source), parse_channels(rows.iloc[0]["channels"]), len(rows))
    return sources

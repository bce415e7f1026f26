"""Readers: TIFF (bit depths, stacks, OME/ImageJ axes), PNG/JPEG (16-bit), zarr / OME-Zarr,
tar members; channel selection; label checks; errors naming the file."""

from __future__ import annotations

import io
import tarfile

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from microfm.data.io import count_planes, image_info, image_stem, read_image, read_label
from microfm.errors import DataError
from microfm.transforms.intensity import Normalizer

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.uint32, np.float32])
def test_tiff_bit_depths_are_read_exactly(tmp_path, dtype):
    hi = 255 if dtype == np.uint8 else 60000
    img = (RNG.random((30, 40)) * hi).astype(dtype)
    tifffile.imwrite(tmp_path / "a.tif", img)
    out = read_image(tmp_path / "a.tif")
    assert out.dtype == dtype and out.shape == (1, 30, 40)
    assert np.array_equal(out[0], img)


def test_imagej_and_ome_axes(tmp_path):
    cyx = RNG.integers(0, 65535, (3, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    assert np.array_equal(read_image(tmp_path / "ij.tif"), cyx)
    zcyx = RNG.integers(0, 65535, (4, 2, 20, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "s.ome.tif", zcyx, ome=True, metadata={"axes": "ZCYX"})
    assert image_stem(tmp_path / "s.ome.tif") == "s"
    assert count_planes(tmp_path / "s.ome.tif") == 4
    assert np.array_equal(read_image(tmp_path / "s.ome.tif", plane=2), zcyx[2])
    with pytest.raises(DataError, match="stack of 4 planes"):
        read_image(tmp_path / "s.ome.tif")
    with pytest.raises(DataError, match="plane 9 does not exist"):
        read_image(tmp_path / "s.ome.tif", plane=9)


def test_channels_last_rgb_tiff_and_axes_override(tmp_path):
    yxc = RNG.integers(0, 65535, (20, 30, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", yxc, photometric="rgb")
    assert np.array_equal(read_image(tmp_path / "rgb.tif"), np.moveaxis(yxc, -1, 0))
    # a plain array without metadata: axes from the config
    tifffile.imwrite(tmp_path / "raw.tif", yxc, photometric="minisblack", metadata=None)
    out = read_image(tmp_path / "raw.tif", axes="YXC", channels=[2, 0])
    assert np.array_equal(out, np.stack([yxc[..., 2], yxc[..., 0]]))
    with pytest.raises(DataError, match="axes 'ZYX' do not fit|axes 'CYXZ'"):
        read_image(tmp_path / "raw.tif", axes="CYXZ")


def test_multipage_without_metadata_pages_are_channels_or_planes(tmp_path):
    pages = RNG.integers(0, 255, (5, 16, 16), dtype=np.uint8)
    with tifffile.TiffWriter(tmp_path / "p.tif") as w:
        for p in pages:
            w.write(p, metadata=None)
    assert read_image(tmp_path / "p.tif").shape == (5, 16, 16)  # one generic axis: channels
    assert count_planes(tmp_path / "p.tif", axes="ZYX") == 5
    assert np.array_equal(read_image(tmp_path / "p.tif", axes="ZYX", plane=3)[0], pages[3])
    # label stacks: pages are planes
    assert np.array_equal(read_label(tmp_path / "p.tif", plane=1), pages[1])


def test_channel_selection_and_missing_channel_error(tmp_path):
    cyx = RNG.integers(0, 4000, (3, 8, 8), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", cyx, imagej=True, metadata={"axes": "CYX"})
    assert np.array_equal(read_image(tmp_path / "c.tif", channels=[2, 0]), cyx[[2, 0]])
    with pytest.raises(DataError, match=r"c\.tif.*data\.channels=\[0, 3\].*3 channel"):
        read_image(tmp_path / "c.tif", channels=[0, 3])


def test_png_16_bit_grey_and_rgb_keep_every_bit(tmp_path):
    grey = RNG.integers(0, 65535, (20, 30), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    assert np.array_equal(read_image(tmp_path / "g.png")[0], grey)
    rgb = RNG.integers(0, 65535, (20, 30, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c.png"), rgb[..., ::-1])  # OpenCV writes BGR
    out = read_image(tmp_path / "c.png")
    assert out.dtype == np.uint16 and np.array_equal(out, np.moveaxis(rgb, -1, 0))
    assert len(np.unique(out)) > 256  # nothing squeezed through 8 bit


def test_png_8_bit_palette_and_jpeg(tmp_path):
    labels = RNG.integers(0, 7, (12, 14), dtype=np.uint8)
    im = Image.fromarray(labels, mode="P")
    im.putpalette([v for i in range(256) for v in (i * 30 % 256, i * 70 % 256, i * 11 % 256)])
    im.save(tmp_path / "pal.png")
    assert np.array_equal(read_label(tmp_path / "pal.png"), labels)  # indices, not colours
    assert read_image(tmp_path / "pal.png").shape == (3, 12, 14)
    yy, xx = np.mgrid[0:32, 0:32]
    rgb = np.stack([yy * 8, xx * 8, 255 - yy * 4], -1).astype(np.uint8)  # smooth: JPEG-friendly
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    out = read_image(tmp_path / "a.jpg")
    assert out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - np.moveaxis(rgb, -1, 0)).mean() < 5  # channel order kept


def test_zarr_and_ome_zarr_read_regions_lazily(tmp_path):
    import zarr

    data = RNG.integers(0, 65535, (2, 300, 400), dtype=np.uint16)
    z = zarr.open_array(
        tmp_path / "a.zarr", mode="w", shape=data.shape, chunks=(1, 64, 64), dtype="uint16"
    )
    z[:] = data
    region = (slice(100, 164), slice(50, 114))
    assert np.array_equal(read_image(tmp_path / "a.zarr", region=region), data[:, 100:164, 50:114])
    # OME-NGFF: axes from the multiscales metadata (t, c, y, x), full resolution level "0"
    g = zarr.open_group(tmp_path / "b.ome.zarr", mode="w")
    tcyx = RNG.integers(0, 4000, (3, 2, 50, 60), dtype=np.uint16)
    g.create_array("0", shape=tcyx.shape, chunks=(1, 1, 32, 32), dtype="uint16")[:] = tcyx
    g.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "t", "type": "time"},
                {"name": "c", "type": "channel"},
                {"name": "y", "type": "space"},
                {"name": "x", "type": "space"},
            ],
            "datasets": [{"path": "0"}],
        }
    ]
    assert count_planes(tmp_path / "b.ome.zarr") == 3
    assert np.array_equal(read_image(tmp_path / "b.ome.zarr", plane=1), tcyx[1])
    assert image_info(tmp_path / "b.ome.zarr")[0] == (2, 50, 60)


def test_tar_member(tmp_path):
    img = RNG.integers(0, 65535, (10, 12), dtype=np.uint16)
    buf = io.BytesIO()
    tifffile.imwrite(buf, img)
    with tarfile.open(tmp_path / "a.tar", "w") as tar:
        info = tarfile.TarInfo("sub/x.tif")
        info.size = len(buf.getvalue())
        tar.addfile(info, io.BytesIO(buf.getvalue()))
    assert np.array_equal(read_image(tmp_path / "a.tar", member="sub/x.tif")[0], img)


@pytest.mark.parametrize("fmt", ["tif", "png", "jpg"])
def test_truncated_files_are_named(tmp_path, fmt):
    img = RNG.integers(0, 255, (64, 64), dtype=np.uint8)
    path = tmp_path / f"bad.{fmt}"
    if fmt == "tif":
        tifffile.imwrite(path, img, compression="zlib")
    else:
        Image.fromarray(img).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"bad\." + fmt + ".*cannot read"):
        read_image(path)


def test_label_checks(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0, 1.5]], np.float32))
    with pytest.raises(DataError, match=r"f\.tif.*non-integer"):
        read_label(tmp_path / "f.tif")
    tifffile.imwrite(tmp_path / "n.tif", np.array([[0, -2]], np.int16))
    with pytest.raises(DataError, match=r"n\.tif.*negative"):
        read_label(tmp_path / "n.tif")
    # integer-valued float labels (e.g. saved by Fiji) are fine
    from microfm.data.io import check_label_values

    ok = check_label_values(np.array([[0.0, 3.0]], np.float32), "x")
    assert ok.dtype.kind == "i" and ok.tolist() == [[0, 3]]
    rgb = RNG.integers(0, 5, (8, 8, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(DataError, match="one channel"):
        read_label(tmp_path / "rgb.tif")


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        st.sampled_from([np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64]),
        st.tuples(st.integers(1, 4), st.integers(1, 12), st.integers(1, 12)),
    ),
    st.sampled_from(["percentile", "minmax", "meanstd", "none"]),
)
def test_any_tiff_in_float32_out_without_nan(image, mode):
    """Property: whatever a TIFF holds (any dtype, shape, NaN/inf included), the reader gives
    it back exactly and normalisation gives finite float32 of the same shape."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.tif"
        tifffile.imwrite(path, image, photometric="minisblack", metadata={"axes": "CYX"})
        out = read_image(path)
    np.testing.assert_array_equal(out, image)
    norm = Normalizer(mode=mode)(out)
    assert norm.dtype == np.float32 and norm.shape == image.shape
    assert np.isfinite(norm).all()


def test_shared_nuclei_fixture(shared):
    """Real files: DSB2018 nuclei (16- and 8-bit) with 125 and 65 labelled nuclei."""
    root = shared / "data" / "dsb2018_nuclei_fixture"
    for size, dtype, n in ((512, np.uint16, 125), (256, np.uint8, 65)):
        img = read_image(root / f"img{size}.tif")
        assert img.shape == (1, size, size) and img.dtype == dtype
        labels = read_label(root / f"labels{size}.tif")
        assert labels.shape == (size, size) and len(np.unique(labels)) - 1 == n
        norm = Normalizer()(img)
        assert np.isfinite(norm).all() and len(np.unique(norm)) == len(np.unique(img))

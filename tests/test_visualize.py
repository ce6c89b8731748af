"""runtime.visualize: overlay maths, labelled grids, atomic PNG files."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from gradcam_model.errors import ExportError, InputError
from gradcam_model.runtime import visualize
from gradcam_model.runtime.visualize import COLORMAPS, caption, grid, heatmap, overlay, save_png

# OpenCV's jet colormap at its two ends, in RGB: 0 -> dark blue, 1 -> dark red
JET_LOW = (0, 0, 128)
JET_HIGH = (128, 0, 0)


def _photo(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_overlay_keeps_the_image_size_and_dtype_and_resizes_the_map():
    image = _photo(48, 64)
    cam = np.random.default_rng(1).random((7, 9)).astype(np.float32)
    out = overlay(image, cam)
    assert out.shape == image.shape and out.dtype == np.uint8
    # the map was resized to the image before colouring: same as colouring a resized map
    resized = cv2.resize(cam, (64, 48), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out, overlay(image, resized))


def test_overlay_alpha_one_is_the_colormap_and_zero_the_image():
    image = _photo()
    cam = np.zeros((48, 64), np.float32)
    cam[:, 32:] = 1.0
    pure = overlay(image, cam, alpha=1.0)
    assert (pure[:, :32] == JET_LOW).all() and (pure[:, 32:] == JET_HIGH).all()
    np.testing.assert_array_equal(overlay(image, cam, alpha=0.0), image)


def test_overlay_blends_linearly():
    image = np.full((8, 8, 3), 100, np.uint8)
    cam = np.ones((8, 8), np.float32)
    out = overlay(image, cam, alpha=0.25)
    # 0.75 * 100 + 0.25 * (128, 0, 0), rounded to nearest
    assert (out == (107, 75, 75)).all()
    out = overlay(image, np.zeros((8, 8)), alpha=0.4)
    assert (out == (60, 60, 111)).all()  # 0.6 * 100 + 0.4 * (0, 0, 128) = 111.2


def test_overlay_matches_an_explicit_blend_on_a_synthetic_map():
    image = _photo(32, 32, seed=3)
    yy, xx = np.mgrid[0:32, 0:32]
    cam = np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 50.0).astype(np.float32)
    alpha = 0.6
    levels = np.rint(cam * 255).astype(np.uint8)
    heat = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB).astype(np.float64)
    expected = np.rint((1 - alpha) * image + alpha * heat).astype(np.uint8)
    got = overlay(image, cam, colormap="turbo", alpha=alpha)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # float32 vs float64 rounding at .5


def test_heatmap_clips_out_of_range_values_and_nan():
    cam = np.array([[-3.0, 0.0], [1.0, 7.0]], np.float32)
    cam_nan = np.array([[np.nan, 0.0], [1.0, 1.0]], np.float32)
    heat = heatmap(cam)
    assert tuple(heat[0, 0]) == JET_LOW and tuple(heat[1, 1]) == JET_HIGH
    assert tuple(heatmap(cam_nan)[0, 0]) == JET_LOW


def test_every_listed_colormap_exists():
    for name in COLORMAPS:
        assert heatmap(np.linspace(0, 1, 16).reshape(4, 4), colormap=name).shape == (4, 4, 3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rgb_uint8": np.zeros((8, 8, 3), np.float32)}, "RGB uint8"),
        ({"rgb_uint8": np.zeros((8, 8), np.uint8)}, "RGB uint8"),
        ({"cam_2d": np.zeros((1, 8, 8))}, "2-D map"),
        ({"alpha": 1.5}, r"alpha must be in \[0, 1\]"),
        ({"colormap": "jett"}, "unknown colormap 'jett' .*did you mean jet"),
    ],
)
def test_overlay_rejects_bad_arguments(kwargs, match):
    args = {"rgb_uint8": np.zeros((8, 8, 3), np.uint8), "cam_2d": np.zeros((8, 8)), **kwargs}
    with pytest.raises(InputError, match=match):
        overlay(args.pop("rgb_uint8"), args.pop("cam_2d"), **args)


def _layout(n: int, cols: int, tile: tuple[int, int], band: int) -> tuple[int, int]:
    pad = visualize._PAD
    rows = -(-n // cols)
    return rows * (band + tile[0]) + (rows + 1) * pad, cols * tile[1] + (cols + 1) * pad


def _band(canvas: np.ndarray, tile: tuple[int, int], rows: int) -> int:
    return (canvas.shape[0] - (rows + 1) * visualize._PAD) // rows - tile[0]


def test_grid_shape_dtype_and_tiles_in_place():
    tile = (40, 50)
    tiles = [_photo(*tile, seed=i) for i in range(5)]
    canvas = grid(tiles, [f"tile {i}" for i in range(5)], cols=2, tile_size=tile)
    assert canvas.dtype == np.uint8
    band = _band(canvas, tile, rows=3)
    assert band > 0
    assert canvas.shape == (*_layout(5, 2, tile, band), 3)
    pad = visualize._PAD
    # tile 3 is row 1, column 1; its picture sits right under its title band, unchanged
    top, left = pad + 1 * (band + tile[0] + pad) + band, pad + 1 * (tile[1] + pad)
    np.testing.assert_array_equal(canvas[top : top + tile[0], left : left + tile[1]], tiles[3])


def test_grid_draws_titles_in_the_band():
    title = "Egyptian cat 0.54"
    # a tile as wide as the title needs, measured with the installed OpenCV's own font
    # metrics (they changed between 4.x and 5.x), so that it takes exactly one line
    tile = (40, visualize._text_width(title) + 4)
    assert visualize._wrap(title, tile[1]) == [title]
    tiles = [_photo(*tile)]
    titled = grid(tiles, [title], cols=1, tile_size=tile)
    blank = grid(tiles, [""], cols=1, tile_size=tile)
    assert titled.shape == blank.shape
    pad = visualize._PAD
    band = _band(titled, tile, rows=1)
    titled_band = titled[pad : pad + band]
    assert (blank[pad : pad + band] == 255).all()
    assert (titled_band < 128).any(axis=2).sum() > 50  # dark text pixels
    np.testing.assert_array_equal(titled[pad + band :], blank[pad + band :])


def _ink(canvas: np.ndarray) -> np.ndarray:
    return (canvas < 200).any(axis=2)


@pytest.mark.parametrize("title", ["pygmy hog 0.33\ntrue: jiggly gypsy", "Egyptian cat 0.54", "Ag"])
def test_grid_titles_are_drawn_whole_inside_their_band(title):
    """No line is clipped by the picture below it or by the next column (descenders included).

    The ink of each tile's title band is compared with the same lines drawn alone on a
    roomy canvas: a line that overflowed its band would lose the pixels the picture
    then covers. Geometry from the library's own measurements, not from one OpenCV's fonts.
    """
    tile = (30, 90)
    white = np.full((*tile, 3), 255, np.uint8)  # an ink-free picture: only the titles are dark
    canvas = grid([white, white], [title, title], cols=2, tile_size=tile)
    pad = visualize._PAD
    band = _band(canvas, tile, rows=1)
    lines = visualize._wrap(title, tile[1])
    (_, text_h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, visualize.TITLE_FONT_SCALE, 1)
    alone = np.full((band + 4 * text_h, tile[1], 3), 255, np.uint8)
    line_h = text_h + baseline + 3
    for j, line in enumerate(lines):
        x = max(0, (tile[1] - visualize._text_width(line)) // 2)
        cv2.putText(alone, line, (x, j * line_h + text_h + 2), cv2.FONT_HERSHEY_SIMPLEX,
                    visualize.TITLE_FONT_SCALE, (20, 20, 20), 1, cv2.LINE_AA)  # fmt: skip
    assert _ink(alone).sum() > 20
    assert not _ink(alone[band:]).any(), "the lines need more height than the band gives them"
    for col in range(2):
        left = pad + col * (tile[1] + pad)
        cell = canvas[pad : pad + band, left : left + tile[1]]
        np.testing.assert_array_equal(_ink(cell), _ink(alone[:band]))
    ink = _ink(canvas)
    ink[pad : pad + band, pad : pad + tile[1]] = False
    ink[pad : pad + band, 2 * pad + tile[1] : 2 * pad + 2 * tile[1]] = False
    assert not ink.any(), "ink outside the title bands"


def test_grid_wraps_long_titles_and_keeps_text_inside_its_tile():
    tile = (30, 100)
    tiles = [_photo(*tile), _photo(*tile, seed=1)]
    short = grid(tiles, ["espresso 0.90", "x"], cols=2, tile_size=tile)
    long_name = "American Staffordshire terrier, Staffordshire terrier 0.12\ntrue: dog"
    wrapped = grid(tiles, [long_name, "x" * 200], cols=2, tile_size=tile)
    assert wrapped.shape[0] > short.shape[0]  # more lines, taller band
    assert wrapped.shape[1] == short.shape[1]
    pad = visualize._PAD
    gap = wrapped[:, pad + tile[1] : 2 * pad + tile[1]]  # the column between the tiles
    assert (gap == 255).all()
    lines = visualize._wrap(long_name, tile[1])
    assert 2 < len(lines) <= visualize.MAX_TITLE_LINES
    assert all(visualize._text_width(line) <= tile[1] for line in lines)
    assert visualize._wrap("x" * 200, tile[1])[0].endswith("...")


def test_grid_letterboxes_other_sizes_and_colours_titles():
    tiles = [_photo(30, 90), _photo(90, 30)]
    canvas = grid(tiles, ["wide", "tall"], cols=2, tile_size=(60, 60), colors=[(200, 0, 0), None])
    band = _band(canvas, (60, 60), rows=1)
    pad = visualize._PAD
    red = canvas[pad : pad + band, pad : pad + 60].astype(int)
    assert ((red[..., 0] > 120) & (red[..., 1] < 100) & (red[..., 2] < 100)).any()
    # the wide tile is scaled to 20x60 and padded below with white
    assert (canvas[pad + band + 20 : pad + band + 60, pad : pad + 60] == 255).all()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        (([], []), {"cols": 2}, InputError, "at least one tile"),
        (([np.zeros((4, 4, 3), np.uint8)], ["a"]), {"cols": 0}, InputError, "cols must be a positive"),
        (([np.zeros((4, 4), np.uint8)], ["a"]), {"cols": 1}, InputError, r"tiles\[0\] must be an RGB"),
        (([np.zeros((4, 4, 3), np.uint8)], ["a", "b"]), {"cols": 1}, InputError, "1 tiles, 2 titles"),
    ],
)
def test_grid_rejects_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        grid(*args, **kwargs)


def test_caption():
    assert caption("espresso", 0.8734) == "espresso 0.87"
    assert caption("tabby", 0.5, true_label="cat") == "tabby 0.50\ntrue: cat"


def test_save_png_round_trips_and_leaves_no_temporary_files(tmp_path):
    image = _photo(20, 30)
    path = save_png(tmp_path / "sub" / "x.png", image)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, image)
    save_png(path, image[::-1].copy())  # overwrite by default
    np.testing.assert_array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), image[::-1])
    assert sorted(os.listdir(path.parent)) == ["x.png"]


def test_save_png_errors(tmp_path):
    existing = save_png(tmp_path / "a.png", _photo(4, 4))
    before = existing.read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        save_png(existing, _photo(4, 4, seed=9), overwrite=False)
    assert existing.read_bytes() == before
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match="cannot create folder"):
        save_png(blocker / "b.png", _photo(4, 4))
    with pytest.raises(InputError, match="RGB uint8"):
        save_png(tmp_path / "c.png", np.zeros((4, 4, 3), np.float64))

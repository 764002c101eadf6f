import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_enhance.errors import ConfigError
from edge_enhance.tiling import choose_tile, extract, overhead, parse_tile, plan_tiles, reflect_index, round_up


@pytest.mark.parametrize("n,pad", [(1, 3), (2, 5), (5, 2), (5, 12), (7, 30)])
def test_reflect_index_matches_numpy_pad(n, pad):
    a = np.arange(n)
    expected = np.pad(a, pad, mode="reflect") if n > 1 else np.zeros(n + 2 * pad, int)
    assert np.array_equal(a[reflect_index(np.arange(-pad, n + pad), n)], expected)


def _check_plan(h, w, tile, m, a=1):
    """Cores cover every pixel once; each window lies in the image (padded up to a multiple of a), or
    starts at 0 where the tile is larger, and gives its core `m` pixels of context on every side that
    is not an image edge."""
    cover = np.zeros((h, w), int)
    for (y, x, ch, cw), (wy, wx) in plan_tiles(h, w, tile, m, a):
        for n, t, c, length, win in ((h, tile[0], y, ch, wy), (w, tile[1], x, cw, wx)):
            padded = round_up(n, a)
            assert win % a == 0 and c % a == 0 and length >= 1
            assert win == 0 if t >= padded else 0 <= win and win + t <= padded
            assert c == 0 or c - win >= m
            assert c + length == n or win + t - (c + length) >= m
        cover[y:y + ch, x:x + cw] += 1
    assert (cover == 1).all()


@given(h=st.integers(1, 90), w=st.integers(1, 90), th=st.integers(9, 40), tw=st.integers(9, 40), m=st.integers(0, 4))
@settings(max_examples=200, deadline=None)
def test_tiles_cover_every_pixel_once(h, w, th, tw, m):
    _check_plan(h, w, (th, tw), m)


def test_edge_tiles_lie_against_the_edge_and_keep_margins_inside():
    # 10 rows, tile 8, margin 2: the first core runs to row 6 (no margin above the image's top edge),
    # the last window is shifted up to end on the image's bottom edge.
    assert [(t.core, t.window) for t in plan_tiles(10, 20, (8, 20), 2)] == [((0, 0, 6, 20), (0, 0)),
                                                                          ((6, 0, 4, 20), (2, 0))]
    # a fixed tile larger than the image: one window from the origin, padded past the bottom / right
    assert [(t.core, t.window) for t in plan_tiles(5, 3, (8, 8), 2)] == [((0, 0, 5, 3), (0, 0))]


def test_extract_inside_is_a_view_and_outside_is_reflected():
    img = np.arange(5 * 6 * 3, dtype=np.uint8).reshape(5, 6, 3)
    inside = extract(img, 1, 1, 3, 3)
    assert np.shares_memory(inside, img)
    padded = np.pad(img, ((2, 4), (2, 4), (0, 0)), mode="reflect")
    assert np.array_equal(extract(img, -2, -2, 11, 12), padded)


def test_choose_tile_rules():
    # fixed model shape wins; a request at least as large as the image means one tile, the image itself
    assert choose_tile(100, 80, 4, 100.0, 256, requested=(64, 64), fixed=(32, 32)) == (32, 32)
    assert choose_tile(100, 80, 4, 100.0, 256, requested=(100, 80)) == (100, 80)
    assert choose_tile(100, 80, 4, 100.0, 256, requested=(50, 60)) == (50, 60)
    # auto: 1 MB budget at 1024 B/pixel -> 32x32
    assert choose_tile(1000, 1000, 4, 1024.0, 1.0) == (32, 32)
    # a strip spends the budget along its length: 1 MB at 1024 B/px = 1 x 1024, balanced to 99 tiles of 1019
    assert choose_tile(1, 100_000, 4, 1024.0, 1.0) == (1, 1019)
    # balanced: 720 x 1280 at a 559 budget and margin 9 -> 2 x 3 tiles of 369 x 439, not of 559 x 559
    assert choose_tile(720, 1280, 9, 1.0, 559 * 559 / 2**20) == (369, 439)
    # never smaller than the margins plus a useful core
    assert choose_tile(1000, 1000, 10, 1e9, 1.0) == (28, 28)


@pytest.mark.parametrize("text,expected", [("auto", None), ("256", (256, 256)), ("128x96", (128, 96))])
def test_parse_tile(text, expected):
    assert parse_tile(text) == expected


@pytest.mark.parametrize("bad", ["0", "x", "12x", "-4", "3x4x5"])
def test_parse_tile_refuses(bad):
    with pytest.raises(ConfigError):
        parse_tile(bad)


def test_margin_must_leave_a_core():
    with pytest.raises(ConfigError, match="margin"):
        plan_tiles(10, 10, (8, 8), 4)


def test_overhead_counts_only_margins_and_padding():
    assert overhead(100, 100, (100, 100), 4) == 1.0  # one tile, the image itself
    assert overhead(99, 99, (100, 100), 4, align=2) == pytest.approx(100 * 100 / 99**2)
    assert overhead(10, 20, (8, 20), 2) == pytest.approx(2 * 8 / 10)


# -- align > 1: every window starts on a multiple of align from the image origin --------------------------------
@given(h=st.integers(1, 90), w=st.integers(1, 90), th=st.integers(0, 20), tw=st.integers(0, 20),
       m=st.integers(0, 3), a=st.sampled_from([2, 4]))
@settings(max_examples=100, deadline=None)
def test_aligned_tiles_start_on_multiples_and_cover_once(h, w, th, tw, m, a):
    m *= a
    _check_plan(h, w, (2 * m + a * (1 + th), 2 * m + a * (1 + tw)), m, a)


@pytest.mark.parametrize("tile,margin", [((101, 100), 16), ((100, 100), 15)])
def test_plan_tiles_refuses_unaligned_tile_or_margin(tile, margin):
    with pytest.raises(ConfigError, match="multiple"):
        plan_tiles(481, 321, tile, margin, align=2)


def test_choose_tile_rules_with_align():
    # the whole image is padded up to the next multiple: 481 x 321 -> 482 x 322
    assert choose_tile(481, 321, 16, 100.0, 256, requested=(481, 321), align=2) == (482, 322)
    # a requested odd side is rounded up to a multiple of align
    assert choose_tile(481, 321, 16, 100.0, 256, requested=(101, 101), align=2) == (102, 102)
    assert choose_tile(481, 321, 16, 100.0, 256, requested=(101, 99), align=4) == (104, 100)
    # a fixed model shape is returned as is (the Enhancer checks it against the card)
    assert choose_tile(481, 321, 16, 100.0, 256, fixed=(128, 128), align=2) == (128, 128)
    # floor: margins plus MIN_CORE rounded up to align
    assert choose_tile(1000, 1000, 12, 1e9, 1.0, align=16) == (40, 40)


@given(h=st.integers(1, 3000), w=st.integers(1, 3000), m=st.integers(0, 12), a=st.sampled_from([1, 2, 3, 4, 8]),
       budget_kb=st.integers(1, 4096))
@settings(max_examples=200, deadline=None)
def test_auto_tile_is_aligned_and_balanced(h, w, m, a, budget_kb):
    m *= a
    th, tw = choose_tile(h, w, m, 64.0, budget_kb / 1024, align=a)
    assert th % a == 0 and tw % a == 0
    for n, t in ((h, th), (w, tw)):
        padded = round_up(n, a)
        if t >= padded:  # one tile along this side: the image, padded only to a multiple of a
            assert t == padded
            continue
        assert t > 2 * m
        count = len(plan_tiles(n, a, (t, a), m, a))
        # balanced: one alignment step smaller would need another tile (or leave no core)
        assert t - a - 2 * m < 1 or len(plan_tiles(n, a, (t - a, a), m, a)) > count
    _check_plan(h, w, (th, tw), m, a)


@pytest.mark.parametrize("requested", [(4000, 4000), (500, 600)])
def test_an_asked_for_tile_over_the_memory_budget_is_said(caplog, requested):
    """--tile 4000 --memory 16 on a 12 MP photo took 7.9 GB with no word: --memory sizes only an automatic tile."""
    assert choose_tile(1000, 1200, 4, 100.0, 16.0, requested=requested) == min(requested, (1000, 1200))
    assert f"tile {min(requested, (1000, 1200))[0]}x" in caplog.text and "over the 16 MB memory budget" in caplog.text
    caplog.clear()
    choose_tile(1000, 1200, 4, 100.0, 64.0, requested=(200, 200))  # 3.8 MB: within it
    assert "memory budget" not in caplog.text

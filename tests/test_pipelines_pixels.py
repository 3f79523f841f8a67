"""Decoded pixels between the loader and the model actors: one Arrow buffer per batch, read back
as zero-copy views. Pure pyarrow and numpy, no Ray: the shapes Ray hands a stage (slices with an
offset, chunked columns, plain ``binary``) are built directly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.dataset import pixel_column, pixel_views


def images(*shapes: tuple[int, int]) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def sizes(ok: list[bool], pictures: list[np.ndarray]) -> tuple[list[int], list[int]]:
    remaining = iter(pictures)
    shapes = [next(remaining).shape[:2] if good else (0, 0) for good in ok]
    return [h for h, _ in shapes], [w for _, w in shapes]


def test_round_trip_keeps_every_image_and_leaves_failures_empty() -> None:
    pictures = images((4, 5), (3, 2), (6, 1))
    ok = [True, False, True, True, False]
    column = pixel_column(pictures, ok)
    heights, widths = sizes(ok, pictures)
    views = pixel_views(column, heights, widths)
    assert [v is None for v in views] == [False, True, False, False, True]
    for view, picture in zip([v for v in views if v is not None], pictures, strict=True):
        np.testing.assert_array_equal(view, picture)
        assert not view.flags.writeable  # a view into the batch, never a copy


def test_a_sliced_column_reads_from_its_offset() -> None:
    pictures = images((2, 2), (3, 3), (4, 4), (5, 5))
    column = pixel_column(pictures, [True] * 4).slice(1, 2)
    views = pixel_views(column, [3, 4], [3, 4])
    np.testing.assert_array_equal(views[0], pictures[1])
    np.testing.assert_array_equal(views[1], pictures[2])


def test_chunked_columns_are_read_chunk_by_chunk() -> None:
    first, second = images((2, 3), (1, 1)), images((3, 2))
    chunked = pa.chunked_array([
        pixel_column(first, [True, True]),
        pa.array([], pa.large_binary()),  # an empty chunk is skipped
        pixel_column(second, [True, False]),
    ])
    views = pixel_views(chunked, [2, 1, 3, 0], [3, 1, 2, 0])
    np.testing.assert_array_equal(views[0], first[0])
    np.testing.assert_array_equal(views[1], first[1])
    np.testing.assert_array_equal(views[2], second[0])
    assert views[3] is None


def test_a_plain_binary_column_is_read_too() -> None:
    picture = images((3, 2))[0]
    views = pixel_views(pa.array([b"", picture.tobytes()], pa.binary()), [0, 3], [0, 2])
    assert views[0] is None
    np.testing.assert_array_equal(views[1], picture)


def test_a_batch_where_every_image_failed_has_no_pixels() -> None:
    column = pixel_column([], [False, False])
    assert pixel_views(column, [0, 0], [0, 0]) == [None, None]


def test_pixel_bytes_that_do_not_match_the_size_are_an_error() -> None:
    column = pixel_column(images((2, 2)), [True])
    with pytest.raises(ValueError, match="12 pixel bytes for 3x2 RGB"):
        pixel_views(column, [2], [3])

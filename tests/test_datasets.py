"""Built-in datasets, the fixed split, and the validation of user `.npz` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from forsaken.common.datasets import (
    FASHION_DIR,
    MIN_SAMPLES,
    TEST_FRACTION,
    load_dataset,
    stratified_split,
)
from forsaken.common.errors import ConfigError, InvalidPayload
from forsaken.common.models import default_architecture


def _check_common(ds, n_total: int, shape: tuple[int, int, int], classes: int) -> None:
    assert ds.input_shape == shape
    assert ds.num_classes == classes
    assert ds.x_train.shape == (len(ds.y_train), *shape)
    assert ds.x_test.shape == (len(ds.y_test), *shape)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    for x in (ds.x_train, ds.x_test):
        assert x.min() >= 0.0 and x.max() <= 1.0
    # Ids are the global indices: disjoint, together exactly 0..N-1, ascending on each side.
    both = np.concatenate([ds.ids_train, ds.ids_test])
    assert np.array_equal(np.sort(both), np.arange(n_total))
    assert np.all(np.diff(ds.ids_train) > 0) and np.all(np.diff(ds.ids_test) > 0)
    assert len(ds.y_test) == pytest.approx(TEST_FRACTION * n_total, abs=classes)


def test_digits_ids_point_back_at_the_raw_images() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits()
    ds = load_dataset("digits")
    _check_common(ds, 1797, (1, 8, 8), 10)
    np.testing.assert_array_equal(ds.x_train[:, 0], raw.images[ds.ids_train] / 16.0)
    np.testing.assert_array_equal(ds.y_test, raw.target[ds.ids_test])


def test_mnist5k_split_is_stratified() -> None:
    ds = load_dataset("mnist5k")
    _check_common(ds, 5000, (1, 28, 28), 10)
    # 500 images per class in the subset: exactly 100 of each in the test split.
    assert np.bincount(ds.y_test).tolist() == [100] * 10
    assert ds.x_train.max() == pytest.approx(1.0)


def test_arrays_are_read_only_because_they_are_cached_and_shared() -> None:
    ds = load_dataset("digits")
    with pytest.raises(ValueError):
        ds.x_train[0, 0, 0, 0] = 2.0


def test_split_ignores_the_global_rng() -> None:
    labels = np.repeat(np.arange(5), 30)
    np.random.seed(1)
    first = stratified_split(labels)
    np.random.seed(2)
    second = stratified_split(labels)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert np.bincount(labels[first[1]]).tolist() == [6] * 5


def test_split_keeps_every_class_on_both_sides() -> None:
    labels = np.array([0] * 40 + [1, 1])  # 20% of 2 rounds to 0; the split still takes one
    train, test = stratified_split(labels)
    assert set(labels[train]) == {0, 1} and set(labels[test]) == {0, 1}


def test_unknown_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        load_dataset("cifar")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz")


def _good(n: int = 60) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.integers(0, 256, size=(n, 6, 5)).astype(np.uint8),
        "y": np.arange(n) % 3,
    }


def test_npz_images_are_scaled_and_given_a_channel(tmp_path: Path) -> None:
    arrays = _good()
    arrays["x"][0, 0, 0], arrays["x"][1, 0, 0] = 0, 255  # both extremes present
    path = tmp_path / "mine.npz"
    np.savez(path, **arrays)
    ds = load_dataset(path)
    assert ds.name == "mine" and ds.input_shape == (1, 6, 5) and ds.num_classes == 3
    got = np.concatenate([ds.x_train, ds.x_test])[np.argsort(np.r_[ds.ids_train, ds.ids_test])]
    np.testing.assert_allclose(got[:, 0], arrays["x"] / 255.0, rtol=1e-6)


def test_npz_vectors_and_unit_range_data_are_kept(tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((40, 7))  # already in [0, 1]: no rescaling
    path = tmp_path / "vec.npz"
    np.savez(path, x=x, y=np.arange(40) % 2)
    ds = load_dataset(str(path))
    assert ds.input_shape == (1, 1, 7)
    np.testing.assert_allclose(ds.x_train[:, 0, 0], x[ds.ids_train], rtol=1e-6)


def _bad_files() -> dict[str, tuple[dict[str, np.ndarray], str]]:
    g = _good()
    nan_x = g["x"].astype(np.float32)
    nan_x[3, 1, 1] = np.nan
    one_rare = g["y"].copy()
    one_rare[0] = 7  # class 7 with a single sample
    return {
        "missing x": ({"y": g["y"]}, r"lacks array\(s\) \['x'\]"),
        "missing y": ({"x": g["x"]}, r"lacks array\(s\) \['y'\]"),
        "length mismatch": ({"x": g["x"], "y": g["y"][:-1]}, "60 samples but y has 59"),
        "nan": ({"x": nan_x, "y": g["y"]}, "1 NaN or Inf"),
        "float labels": ({"x": g["x"], "y": g["y"].astype(float)}, "integer class labels"),
        "negative label": ({"x": g["x"], "y": g["y"] - 1}, r"labels must lie in \[0"),
        "few samples": ({"x": g["x"][:5], "y": g["y"][:5]}, f"at least {MIN_SAMPLES}"),
        "one class": ({"x": g["x"], "y": np.zeros(60, dtype=int)}, "single class"),
        "singleton class": ({"x": g["x"], "y": one_rare}, r"class\(es\) \[7\]"),
        "constant": ({"x": np.ones((60, 4)), "y": g["y"]}, "constant"),
        "text": ({"x": np.array(["a"] * 60), "y": g["y"]}, "numeric"),
        "5-d": ({"x": np.zeros((60, 1, 1, 2, 2)), "y": g["y"]}, "shaped"),
        "2-d labels": ({"x": g["x"], "y": g["y"][:, None]}, "1-D array of labels"),
        "pickled": ({"x": np.array([object()] * 60), "y": g["y"]}, "need pickle, which is refused"),
    }


@pytest.mark.parametrize("case", sorted(_bad_files()))
def test_npz_bad_content_is_rejected_with_a_named_problem(tmp_path: Path, case: str) -> None:
    arrays, message = _bad_files()[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # object arrays are pickled on save; loading must refuse them
    with pytest.raises(InvalidPayload, match=message):
        load_dataset(path)


def test_npz_that_is_not_an_archive_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip file")
    with pytest.raises(InvalidPayload, match=r"not a readable \.npz"):
        load_dataset(path)


def test_idx_files_are_read_and_checked(tmp_path: Path) -> None:
    import gzip

    from forsaken.common.datasets import read_idx

    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    good = tmp_path / "x-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(read_idx(good), images)
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(InvalidPayload, match="header promises"):
        read_idx(short)
    wrong = tmp_path / "float-idx"
    wrong.write_bytes(bytes([0, 0, 0x0D, 1]) + (4).to_bytes(4, "big") + b"\0" * 16)
    with pytest.raises(InvalidPayload, match="unsigned bytes"):
        read_idx(wrong)


@pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
)
def test_fashion_keeps_its_own_60k_10k_split() -> None:
    ds = load_dataset("fashion")
    assert ds.x_train.shape == (60_000, 1, 28, 28) and ds.x_test.shape == (10_000, 1, 28, 28)
    assert ds.num_classes == 10 and ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    assert not set(ds.ids_train.tolist()) & set(ds.ids_test.tolist())
    assert default_architecture("fashion") == "cnn"

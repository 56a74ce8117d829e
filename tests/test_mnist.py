"""MNIST IDX reader (real 10k file and damaged copies), digits, autoencoder data."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from slimtrain.problems.mnist import (
    digits_autoencoder_data,
    load_digits_images,
    load_mnist,
    make_autoencoder_data,
    mnist_autoencoder_data,
    read_idx,
)

MNIST_LABEL_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    """The shared MNIST 10k folder; a missing folder fails the test (it never skips)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    assert (path / "t10k-images-idx3-ubyte.gz").is_file(), f"MNIST test data missing at {path}"
    return path


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_mnist(mnist_dir)


def _idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = (0x0800 | arr.ndim) if magic is None else magic
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_pair(folder: Path, images: bytes, labels: bytes, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    for name, data in (("t10k-images-idx3-ubyte", images), ("t10k-labels-idx1-ubyte", labels)):
        path = folder / (name + suffix)
        path.write_bytes(gzip.compress(data) if gz else data)


def test_mnist_10k_shape_and_label_counts(mnist: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = mnist
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == MNIST_LABEL_COUNTS
    assert images.max() == 255 and images.min() == 0
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the well-known first labels


def test_raw_idx_reads_like_gzip(mnist_dir: Path, mnist, tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(mnist_dir / f"{name}.gz", "rb") as src:
            (tmp_path / name).write_bytes(src.read())
    images, labels = load_mnist(tmp_path)
    np.testing.assert_array_equal(images, mnist[0])
    np.testing.assert_array_equal(labels, mnist[1])


def test_missing_folder_and_files(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_mnist(missing)
    _write_pair(tmp_path / "half", _idx_bytes(np.zeros((2, 4, 4))), _idx_bytes(np.zeros(2)))
    (tmp_path / "half" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_mnist(tmp_path / "half")
    with pytest.raises(FileNotFoundError):
        load_mnist(tmp_path / "half", split="train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path / "half", split="test")


def test_truncated_gzip_is_a_clear_error(mnist_dir: Path, tmp_path: Path) -> None:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(mnist_dir / name, tmp_path / name)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*gzip"):
        load_mnist(tmp_path)


def test_not_gzip_is_a_clear_error(tmp_path: Path) -> None:
    _write_pair(tmp_path, _idx_bytes(np.zeros((2, 4, 4))), _idx_bytes(np.zeros(2)))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match="gzip"):
        load_mnist(tmp_path)


def test_wrong_magic(tmp_path: Path) -> None:
    images = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    _write_pair(tmp_path, _idx_bytes(images, magic=0x00000804), _idx_bytes(np.zeros(2)))
    with pytest.raises(ValueError, match=r"magic number 0x00000804, expected 0x00000803"):
        load_mnist(tmp_path)
    # labels file given where images are expected
    _write_pair(tmp_path, _idx_bytes(np.zeros(2)), _idx_bytes(np.zeros(2)))
    with pytest.raises(ValueError, match="0x00000801"):
        load_mnist(tmp_path)


def test_truncated_and_overlong_payload(tmp_path: Path) -> None:
    images = _idx_bytes(np.ones((3, 4, 4)))
    _write_pair(tmp_path, images[:-5], _idx_bytes(np.zeros(3)), gz=False)
    with pytest.raises(ValueError, match=r"truncated: 59 bytes, expected 64"):
        load_mnist(tmp_path)
    _write_pair(tmp_path, images + b"\x00", _idx_bytes(np.zeros(3)), gz=False)
    with pytest.raises(ValueError, match="longer than its header"):
        load_mnist(tmp_path)
    _write_pair(tmp_path, images[:10], _idx_bytes(np.zeros(3)), gz=False)
    with pytest.raises(ValueError, match="header"):
        load_mnist(tmp_path)


def test_count_mismatch_and_bad_labels(tmp_path: Path) -> None:
    _write_pair(tmp_path, _idx_bytes(np.ones((3, 4, 4))), _idx_bytes(np.zeros(2)))
    with pytest.raises(ValueError, match="3 images but .* 2 labels"):
        load_mnist(tmp_path)
    _write_pair(tmp_path, _idx_bytes(np.ones((2, 4, 4))), _idx_bytes(np.array([1, 12])))
    with pytest.raises(ValueError, match="label 12"):
        load_mnist(tmp_path)


def test_small_valid_file_round_trip(tmp_path: Path) -> None:
    images = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    _write_pair(tmp_path, _idx_bytes(images), _idx_bytes(np.array([3, 9])))
    got, labels = load_mnist(tmp_path)
    np.testing.assert_array_equal(got, images)
    assert labels.tolist() == [3, 9]
    # a non-uint8 IDX file (big-endian int32) through the generic reader
    arr = np.array([[1, -2], [70000, 4]], dtype=">i4")
    path = tmp_path / "ints.idx"
    path.write_bytes(struct.pack(">I", 0x00000C02) + struct.pack(">II", 2, 2) + arr.tobytes())
    np.testing.assert_array_equal(read_idx(path), [[1, -2], [70000, 4]])


def test_mnist_autoencoder_split_and_standardisation(mnist_dir: Path, mnist) -> None:
    data = mnist_autoencoder_data(mnist_dir)
    x_train, y_train = data.train.tensors
    x_val, y_val = data.val.tensors
    assert x_train.shape == (8000, 1, 28, 28) and x_val.shape == (2000, 1, 28, 28)
    assert x_train.dtype == torch.float32
    assert x_train is y_train and x_val is y_val  # inputs are the targets
    pixels = mnist[0].astype(np.float64) / 255.0
    mean, std = pixels[:8000].mean(), pixels[:8000].std()
    assert data.mean == pytest.approx(mean, rel=1e-12) and data.std == pytest.approx(std, rel=1e-12)
    assert 0.12 < data.mean < 0.14 and 0.30 < data.std < 0.32  # MNIST's familiar statistics
    np.testing.assert_allclose(x_val[:, 0].numpy(), (pixels[8000:] - mean) / std, atol=1e-5)
    np.testing.assert_allclose(x_train[:, 0].numpy(), (pixels[:8000] - mean) / std, atol=1e-5)
    assert abs(float(x_train.double().mean())) < 1e-6
    assert float(x_train.double().std()) == pytest.approx(1.0, abs=1e-4)
    first_val = torch.from_numpy(pixels[8000:8001]).float()
    torch.testing.assert_close(data.to_pixels(x_val[:1, 0]), first_val, atol=1e-6, rtol=0)
    assert data.image_size == 28


def test_digits_images_and_autoencoder_data() -> None:
    images, labels = load_digits_images()
    assert images.shape == (1797, 8, 8) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    big, _ = load_digits_images(28)
    assert big.shape == (1797, 28, 28) and 0.0 <= big.min() and big.max() <= 1.0
    data = digits_autoencoder_data()
    assert data.train.tensors[0].shape == (1440, 1, 8, 8)
    assert data.val.tensors[0].shape == (357, 1, 8, 8)
    assert data.mean == pytest.approx(float(images[:1440].astype(np.float64).mean()), rel=1e-6)


def test_make_autoencoder_data_bad_input() -> None:
    images = np.zeros((10, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="exceeds"):
        make_autoencoder_data(images, 8, 5)
    with pytest.raises(ValueError, match="constant"):
        make_autoencoder_data(images, 8)
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        make_autoencoder_data(np.zeros((10, 16)), 8)
    with pytest.raises(ValueError, match="n_train"):
        make_autoencoder_data(images, 1)

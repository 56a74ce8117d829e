"""Image data for the autoencoder experiment: MNIST from IDX files, scikit-learn's 8x8 digits.

Nothing is downloaded. MNIST is read from a folder holding the files in LeCun's IDX format,
gzip-compressed or raw (``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``
for ``split="t10k"``, ``train-...`` for ``split="train"``); magic numbers, dimensions and
file sizes are checked and a missing or damaged file raises an error naming the path and what
was expected. The offline default is scikit-learn's bundled 8x8 digits (1797 images), kept at
8x8: :func:`slimtrain.problems.networks.autoencoder_network` with ``image_size=8`` adapts the
network (the same layers; the spatial sizes are 8 -> 4 -> 2 -> 4 -> 8), which is cheaper and
adds no interpolated pixels. ``load_digits_images(image_size=28)`` upsamples bilinearly for
the 28x28 network.

Autoencoder data (:func:`make_autoencoder_data`): the first ``n_train`` images train, the last
``n_val`` validate (MNIST 10k file: 8000 / 2000); pixels are standardised by the scalar mean and
standard deviation of the *training* split's pixels (as the paper does), the same affine map for
every split; inputs and targets are the same tensor, shape ``(n, 1, H, W)`` float32.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from slimtrain._validation import check_int

__all__ = [
    "AutoencoderData",
    "digits_autoencoder_data",
    "load_digits_images",
    "load_mnist",
    "make_autoencoder_data",
    "mnist_autoencoder_data",
    "read_idx",
]

logger = logging.getLogger(__name__)

# IDX type codes -> big-endian numpy dtypes.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_SPLITS = ("t10k", "train")


def _read_bytes(path: Path) -> bytes:
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"{path} is not a complete gzip file ({err}); expected a gzip-compressed IDX "
                "file: replace it with an intact copy"
            ) from err
    return path.read_bytes()


def read_idx(path: str | os.PathLike[str], expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw, or gzip-compressed when the name ends in ``.gz``).

    Parameters
    ----------
    path : path
        The file.
    expected_magic : int, optional
        The magic number the file must carry, e.g. ``0x00000803`` for unsigned-byte images
        with 3 dimensions.

    Returns
    -------
    numpy.ndarray
        The array with the file's dimensions, in native byte order.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For a damaged gzip stream, a wrong magic number, or a size that does not match the
        header (truncated or trailing bytes); the message names the path and the expectation.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} holds {len(data)} bytes, too short for an IDX header (4+)")
    magic = int.from_bytes(data[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise ValueError(
            f"{path} has magic number 0x{magic:08x}, expected 0x{expected_magic:08x} "
            "(is it the right file, decompressed correctly?)"
        )
    type_code, ndim = data[2], data[3]
    if data[:2] != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(f"{path} has magic number 0x{magic:08x}, which is not an IDX header")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, the header alone needs {header}")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = header + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise ValueError(
            f"{path} is {what}: {len(data)} bytes, expected {expected} for dimensions {dims}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"MNIST file {directory / stem}[.gz] not found: expected {stem}.gz or {stem} in "
        f"{directory}"
    )


def load_mnist(
    data_dir: str | os.PathLike[str], split: str = "t10k"
) -> tuple[np.ndarray, np.ndarray]:
    """Read an MNIST split from IDX files in ``data_dir`` (no download).

    Parameters
    ----------
    data_dir : path
        Folder holding ``{split}-images-idx3-ubyte[.gz]`` and ``{split}-labels-idx1-ubyte[.gz]``
        (the ``.gz`` file is preferred when both exist).
    split : {"t10k", "train"}
        The 10000-image test file or the 60000-image training file.

    Returns
    -------
    images : numpy.ndarray
        Shape ``(n, rows, cols)`` (``(n, 28, 28)`` for MNIST), uint8.
    labels : numpy.ndarray
        Shape ``(n,)``, int64.

    Raises
    ------
    FileNotFoundError
        If the folder or a file is missing.
    ValueError
        For a bad split name or a corrupt, truncated or mismatched file.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, found {split!r}")
    directory = Path(data_dir).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"MNIST folder {directory} does not exist; expected a folder holding "
            f"{split}-images-idx3-ubyte.gz and {split}-labels-idx1-ubyte.gz"
        )
    images_path = _find(directory, f"{split}-images-idx3-ubyte")
    labels_path = _find(directory, f"{split}-labels-idx1-ubyte")
    images = read_idx(images_path, _IMAGES_MAGIC)
    labels = read_idx(labels_path, _LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; expected the same count"
        )
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise ValueError(f"{images_path} holds images of size {images.shape[1:]}, expected > 0")
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{labels_path} holds label {int(labels.max())}, expected digits 0..9")
    logger.debug("read %d MNIST images %s from %s", images.shape[0], images.shape[1:], directory)
    return images, labels.astype(np.int64)


def load_digits_images(image_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits (1797 images, offline) as float images in [0, 1].

    Parameters
    ----------
    image_size : int
        8 keeps the native resolution (the default, for ``autoencoder_network(image_size=8)``);
        any other size resamples bilinearly (e.g. 28 for the MNIST-sized network).

    Returns
    -------
    images : numpy.ndarray
        Shape ``(1797, image_size, image_size)``, float32, pixel values ``/ 16`` in [0, 1].
    labels : numpy.ndarray
        Shape ``(1797,)``, int64.
    """
    from sklearn.datasets import load_digits

    check_int("image_size", image_size, minimum=2)
    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0
    if image_size != images.shape[1]:
        resized = torch.nn.functional.interpolate(
            torch.from_numpy(images)[:, None],
            size=(image_size, image_size),
            mode="bilinear",
            align_corners=False,
        )
        images = resized[:, 0].clamp(0.0, 1.0).numpy()
    return images, np.asarray(bunch.target, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class AutoencoderData:
    """Standardised image data for the autoencoder; inputs are the targets.

    Attributes
    ----------
    train, val : torch.utils.data.TensorDataset
        Each yields ``(x, x)`` with ``x`` of shape ``(1, H, W)``, float32, standardised.
    mean, std : float
        The training split's pixel mean and standard deviation (pixels scaled to [0, 1]
        first), used for every split: ``x = (pixels - mean) / std``.
    """

    train: TensorDataset
    val: TensorDataset
    mean: float
    std: float

    @property
    def image_size(self) -> int:
        """Height (= width) of the images."""
        return int(self.train.tensors[0].shape[-1])

    def to_pixels(self, x: Tensor) -> Tensor:
        """Undo the standardisation: ``x * std + mean`` (pixels in [0, 1])."""
        return x * self.std + self.mean



def image_pixels(
    images: np.ndarray, n_train: int, n_val: int | None
) -> tuple[np.ndarray, int, int]:
    """Check images ``(n, H, W)`` and a train / validation split of them; float64 pixels.

    uint8 pixels are scaled by ``1 / 255``, other real values are taken as they are.
    ``n_val=None`` means every image after the first ``n_train``. Returns the pixels and the
    checked ``(n_train, n_val)``; raises ``ValueError``/``TypeError`` naming what was found.
    """
    if not isinstance(images, np.ndarray) or images.ndim != 3:
        found = getattr(images, "shape", type(images).__name__)
        raise ValueError(f"images must be a numpy array of shape (n, H, W), found {found}")
    n = images.shape[0]
    n_train = check_int("n_train", n_train, minimum=2)
    n_val = check_int("n_val", n - n_train if n_val is None else n_val, minimum=0)
    if n_train + n_val > n:
        raise ValueError(f"n_train + n_val = {n_train + n_val} exceeds the {n} images available")
    if images.dtype == np.uint8:
        pixels = images.astype(np.float64) / 255.0
    elif np.issubdtype(images.dtype, np.floating) or np.issubdtype(images.dtype, np.integer):
        pixels = images.astype(np.float64)
    else:
        raise TypeError(f"images must hold real numbers, found dtype {images.dtype}")
    if not np.isfinite(pixels).all():
        raise ValueError("images must be finite")
    return pixels, n_train, n_val

def make_autoencoder_data(
    images: np.ndarray, n_train: int, n_val: int | None = None
) -> AutoencoderData:
    """Split images (first ``n_train`` train, last ``n_val`` validate) and standardise them.

    Parameters
    ----------
    images : numpy.ndarray
        Shape ``(n, H, W)``; uint8 pixels are scaled by ``1 / 255``, floats are taken as they
        are (the standardisation removes the scale either way).
    n_train : int
        Number of leading images for training (at least 2).
    n_val : int, optional
        Number of trailing images for validation; default all images after the training ones.

    Returns
    -------
    AutoencoderData
        Inputs = targets, ``(n, 1, H, W)`` float32, standardised by the training split's scalar
        pixel mean and standard deviation.
    """
    pixels, n_train, n_val = image_pixels(images, n_train, n_val)
    n = pixels.shape[0]
    train = pixels[:n_train]
    val = pixels[n - n_val :]
    mean = float(train.mean())
    std = float(train.std())
    if not std > 0.0:
        raise ValueError("the training images are constant (pixel std 0); cannot standardise")

    def tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(((a - mean) / std).astype(np.float32)[:, None])

    x_train, x_val = tensor(train), tensor(val)
    return AutoencoderData(
        train=TensorDataset(x_train, x_train),
        val=TensorDataset(x_val, x_val),
        mean=mean,
        std=std,
    )


def mnist_autoencoder_data(
    data_dir: str | os.PathLike[str], split: str = "t10k", n_train: int = 8000, n_val: int = 2000
) -> AutoencoderData:
    """MNIST autoencoder data: first ``n_train`` images train, last ``n_val`` validate.

    The defaults give the SPEC's split of the 10k file (8000 / 2000), ``(n, 1, 28, 28)``.
    """
    images, _ = load_mnist(data_dir, split)
    return make_autoencoder_data(images, n_train, n_val)


def digits_autoencoder_data(
    image_size: int = 8, n_train: int = 1440, n_val: int | None = None
) -> AutoencoderData:
    """Offline autoencoder data from scikit-learn's digits: 1440 train / 357 validation.

    ``image_size=8`` keeps the native 8x8 pixels (use ``autoencoder_network(image_size=8)``);
    28 upsamples for the MNIST-sized network.
    """
    images, _ = load_digits_images(image_size)
    return make_autoencoder_data(images, n_train, n_val)

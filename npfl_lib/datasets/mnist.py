"""MNIST: fetched from mirrors, verified by md5, cached on disk, parsed from the IDX format."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import sys
import tempfile
import urllib.request
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
import tqdm.auto

from .._checks import check_in_range
from .splits import Split, Splits, _check_size

__all__ = ["MNIST", "read_idx", "MIRRORS", "CHECKSUMS"]

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
# The published md5s of the four files, as torchvision lists them.
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
URL_SCHEMES = ("http://", "https://", "file://")

# The IDX type codes (third byte of the magic number) and the big-endian dtypes they mean.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Reads an IDX file, the format MNIST ships in; gunzips it when its name ends in .gz.

    An IDX file starts with a 4-byte magic number: two zero bytes, a type code (0x08
    unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E
    float64) and the number of dimensions. The size of each dimension follows as a
    big-endian int32, then all values in row-major order, big-endian. MNIST's image
    files have the magic number 0x00000803 (2051: ubyte, 3-D), its label files
    0x00000801 (2049: ubyte, 1-D).

    Args:
        path (str | os.PathLike): The file.

    Returns:
        torch.Tensor: The values, in the file's shape and type (torch.uint8 for MNIST).

    Raises:
        ValueError: If the file is not a valid gzip file, has a wrong magic number, or
            is shorter or longer than its header says.
    """
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as file:
            data = file.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise ValueError(f"{path} is not a complete gzip file ({error})") from error

    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file: its magic number is 0x{data[:4].hex()}, but should be "
            "0x0000TTDD with a type code TT in {08, 09, 0b, 0c, 0d, 0e} and DD dimensions"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[data[2]]), data[3]
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(f"{path} is truncated: it ends inside its header of {header_size} bytes")
    shape = tuple(int(size) for size in np.frombuffer(data, ">i4", count=ndim, offset=4))
    expected = header_size + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path} is {'truncated' if len(data) < expected else 'too long'}: its header "
            f"promises {shape} values of type {dtype.name}, {expected} bytes in all, "
            f"but it has {len(data)} bytes"
        )
    values = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
    return torch.from_numpy(values.astype(dtype.newbyteorder("=")))  # a native, writable copy


class MNIST(Splits):
    """The MNIST handwritten digits, split 55,000 / 5,000 / 10,000 as in NPFL138.

    ``train`` is the first ``60,000 - dev_size`` images of the training file, ``dev`` its
    last ``dev_size`` images and ``test`` the 10,000 images of the t10k file. Inputs are
    float32 of shape ``(N, 1, 28, 28)`` in [0, 1] (pixel / 255), targets int64 digits 0..9.

    The four gzipped IDX files are cached in the folder ``MNIST.folder(root)``:
    ``<root>/mnist``, else ``$NPFL_DATA/mnist``, else ``$XDG_CACHE_HOME/npfl_lib/mnist``
    (default ``~/.cache/npfl_lib/mnist``). A file that is missing, or whose md5 differs
    from ``checksums`` (a corrupt or partial file), is downloaded from the mirrors,
    tried in order; a download whose md5 differs counts as that mirror's failure. Each
    download goes to a temporary file in the same folder that is renamed into place
    only once its md5 is right, so an interrupted download never leaves a bad file and
    concurrent loaders do not clash. ``MNIST.is_cached(root)`` tells, without any
    download, whether all four files are there.

    Args:
        root (str | os.PathLike | None): The data folder; see above.
        download (bool): If False, a missing or corrupt file is an error instead of a
            download.
        mirrors (Iterable[str] | str | None): Base URLs (``http://``, ``https://`` or
            ``file://``) that hold the four files; default ``MIRRORS``.
        checksums (Mapping[str, str] | None): The md5 of each of the four files, by file
            name; default ``CHECKSUMS`` (the published ones).
        dev_size (int): How many images at the end of the training file form ``dev``.
        timeout (float): Seconds a download may stall before its mirror counts as failed.
        progress (bool | None): Whether to show download progress bars; None shows them
            in a terminal or Jupyter and hides them otherwise (e.g. in logs and tests).

    Raises:
        ValueError: For a bad argument, or a file that is not the IDX data it should be.
        FileNotFoundError: If ``download=False`` and a file is missing or corrupt; the
            message says which files to put into which folder.
        RuntimeError: If every mirror fails for some file; the message lists each
            mirror's failure and says which files to put into which folder.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        download: bool = True,
        mirrors: Iterable[str] | str | None = None,
        *,
        checksums: Mapping[str, str] | None = None,
        dev_size: int = 5000,
        timeout: float = 30.0,
        progress: bool | None = None,
    ) -> None:
        mirrors = _check_mirrors(mirrors)
        checksums = _check_checksums(checksums)
        dev_size = _check_size("dev_size", dev_size)
        check_in_range("timeout", timeout, 0.0, math.inf, low_inclusive=False)
        folder = MNIST.folder(root)

        _ensure_files(folder, mirrors, checksums, download, timeout, progress)
        full_train, test = _read_split(folder, "train"), _read_split(folder, "t10k")
        if dev_size > len(full_train):
            raise ValueError(
                f"dev_size must be at most the {len(full_train)} training images, got {dev_size}"
            )
        train_size = len(full_train) - dev_size
        inputs, targets = full_train.inputs, full_train.targets
        train = Split(inputs[:train_size], targets[:train_size])
        dev = Split(inputs[train_size:], targets[train_size:])
        super().__init__("MNIST", train, dev, test, num_classes=10)

    @staticmethod
    def folder(root: str | os.PathLike | None = None) -> Path:
        """The folder that caches the MNIST files for ``root`` (see the class docstring)."""
        if root is not None:
            return Path(root).expanduser() / "mnist"
        if os.environ.get("NPFL_DATA"):
            return Path(os.environ["NPFL_DATA"]).expanduser() / "mnist"
        cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(cache).expanduser() / "npfl_lib" / "mnist"

    @staticmethod
    def is_cached(
        root: str | os.PathLike | None = None, checksums: Mapping[str, str] | None = None
    ) -> bool:
        """Whether all four files are cached with the right md5, so loading needs no network."""
        checksums = _check_checksums(checksums)
        return not _missing_files(MNIST.folder(root), checksums)


def _check_mirrors(mirrors: Iterable[str] | str | None) -> tuple[str, ...]:
    if mirrors is None:
        return MIRRORS
    mirrors = (mirrors,) if isinstance(mirrors, str) else tuple(mirrors)
    if not mirrors:
        raise ValueError("mirrors must list at least one URL")
    for mirror in mirrors:
        if not isinstance(mirror, str) or not mirror.lower().startswith(URL_SCHEMES):
            raise ValueError(f"mirrors must be URLs starting with {URL_SCHEMES}, got {mirror!r}")
    return mirrors


def _check_checksums(checksums: Mapping[str, str] | None) -> dict[str, str]:
    if checksums is None:
        return CHECKSUMS
    if not isinstance(checksums, Mapping) or set(checksums) != set(CHECKSUMS):
        raise ValueError(f"checksums must map exactly the file names {sorted(CHECKSUMS)} to md5s")
    return {name: str(md5).lower() for name, md5 in checksums.items()}


def _md5(path: Path) -> str:
    # usedforsecurity=False: md5 only guards against corruption here, and FIPS builds allow that.
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_files(folder: Path, checksums: Mapping[str, str]) -> dict[str, str]:
    """The files to fetch, each with why: "missing" or "corrupt"."""
    missing = {}
    for name, md5 in checksums.items():
        path = folder / name
        if not path.is_file():
            missing[name] = "missing"
        elif _md5(path) != md5:
            missing[name] = "corrupt: md5 mismatch"
    return missing


def _how_to_fix(folder: Path, missing: Mapping[str, str], mirrors: tuple[str, ...]) -> str:
    files = "\n".join(f"  {name} ({why})" for name, why in missing.items())
    return (
        f"To use MNIST offline, download these files (e.g. from {mirrors[0]}) and put them "
        f"into the folder {folder}:\n{files}\n(Or pass another root= or set $NPFL_DATA.)"
    )


class _ChecksumError(Exception):
    """A download finished, but its md5 is not the expected one."""


def _ensure_files(folder, mirrors, checksums, download, timeout, progress) -> None:
    missing = _missing_files(folder, checksums)
    if missing and not download:
        raise FileNotFoundError(
            "MNIST is not (completely) cached and download=False. "
            + _how_to_fix(folder, missing, mirrors)
        )
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
    if progress is None:
        # tqdm's own check (stderr is a TTY) would hide the bars in Jupyter, the course's home.
        progress = sys.stderr.isatty() or _in_jupyter_kernel()
    for name in missing:
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + name
            try:
                _download(url, folder / name, checksums[name], timeout, progress)
                break
            except (OSError, http.client.HTTPException, _ChecksumError) as error:
                failures.append(f"  {url}: {type(error).__name__}: {error}")
        else:
            raise RuntimeError(
                f"Could not download {name} from any mirror:\n"
                + "\n".join(failures)
                + "\n"
                + _how_to_fix(folder, _missing_files(folder, checksums), mirrors)
            )


def _in_jupyter_kernel() -> bool:
    """Whether this code runs in a Jupyter kernel (not merely a process that imported
    ipykernel, as a test runner or nbclient may)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None) is not None


def _download(url: str, path: Path, md5: str, timeout: float, progress: bool) -> None:
    """Downloads ``url`` to ``path`` atomically: to a temporary file, checked, then renamed."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(handle, "wb") as file, urllib.request.urlopen(url, timeout=timeout) as body:
            size = int(body.headers.get("Content-Length") or 0) or None
            with tqdm.auto.tqdm(
                total=size, unit="B", unit_scale=True, desc=path.name, disable=not progress
            ) as bar:
                while chunk := body.read(1 << 16):
                    file.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            # http.client returns a short body without an error when the connection drops.
            if size is not None and file.tell() != size:
                raise ConnectionError(f"got {file.tell()} of the announced {size} bytes")
        if digest.hexdigest() != md5:
            raise _ChecksumError(f"the file's md5 is {digest.hexdigest()}, expected {md5}")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def _read_split(folder: Path, prefix: str) -> Split:
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz")
    if images.dtype != torch.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{folder / prefix}-images-idx3-ubyte.gz must hold uint8 images of shape "
            f"(N, 28, 28), got {tuple(images.shape)} {images.dtype}"
        )
    if labels.dtype != torch.uint8 or labels.shape != images.shape[:1] or (labels > 9).any():
        raise ValueError(
            f"{folder / prefix}-labels-idx1-ubyte.gz must hold {len(images)} uint8 labels "
            f"0..9, got {tuple(labels.shape)} {labels.dtype}"
        )
    inputs = images.unsqueeze(1).to(torch.float32) / 255
    return Split(inputs, labels.to(torch.int64))

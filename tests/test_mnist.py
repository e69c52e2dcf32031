"""Tests of npfl_lib.datasets.mnist: mirrors, md5s, the cache, atomic writes, the IDX parser.

Downloads are tested against a local HTTP server on 127.0.0.1 that serves tiny but
valid MNIST files (60 training and 10 test images), each mirror under its own path.
"""

import gzip
import hashlib
import http.server
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.datasets import CHECKSUMS, MIRRORS, MNIST, read_idx
from npfl_lib.datasets.mnist import _read_split

REAL = Path("/work/shared/data/mnist-t10k")
NAMES = list(CHECKSUMS)
IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D}
IDX_CODES["float64"] = 0x0E


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic number, big-endian sizes, big-endian values."""
    header = bytes([0, 0, IDX_CODES[array.dtype.name], array.ndim])
    sizes = np.array(array.shape, dtype=">i4").tobytes()
    return header + sizes + array.astype(array.dtype.newbyteorder(">")).tobytes()


def tiny_mnist(train: int = 60, test: int = 10, side: int = 28) -> dict:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, test, dtype=np.uint8),
    }
    return {
        name: (array, gzip.compress(idx_bytes(array), mtime=0)) for name, array in arrays.items()
    }


TINY = tiny_mnist()
FILES = {name: data for name, (_, data) in TINY.items()}
MD5S = {name: hashlib.md5(data).hexdigest() for name, data in FILES.items()}


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves /<mirror>/<file>: "good" the files, "bad" wrong bytes, "truncated" half of
    each file after announcing all of it, "slow" the files after a second, others 404."""

    def do_GET(self):
        self.server.requests.append(self.path)
        mirror, _, name = self.path.strip("/").partition("/")
        body = FILES.get(name) if mirror in ("good", "truncated", "slow") else None
        if mirror == "bad" and name in FILES:
            body = b"not the file you are looking for"
        if body is None:
            self.send_error(404)
            return
        if mirror == "slow":
            time.sleep(1)
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if mirror == "truncated" else body)

    def log_message(self, *args):  # keep the test output quiet
        pass


class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # e.g. the "slow" mirror writing to a client that gave up: expected, and quiet


@pytest.fixture(scope="module")
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.url = lambda mirror: f"http://127.0.0.1:{httpd.server_address[1]}/{mirror}/"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def requests(server):
    """The paths requested during one test."""
    server.requests.clear()
    return server.requests


def load(root, server, *mirrors, **kwargs) -> MNIST:
    kwargs = {"checksums": MD5S, "dev_size": 10, "progress": False, **kwargs}
    return MNIST(root, mirrors=[server.url(mirror) for mirror in mirrors], **kwargs)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def assert_tells_what_to_put_where(message: str, folder: Path, names=NAMES) -> None:
    assert f"put them into the folder {folder}" in message
    for name in names:
        assert name in message


def test_download_splits_and_cache(tmp_path, server, requests):
    data = load(tmp_path, server, "good")
    assert requests == [f"/good/{name}" for name in NAMES]
    assert data.name == "MNIST" and data.num_classes == 10 and data.input_shape == (1, 28, 28)
    assert (len(data.train), len(data.dev), len(data.test)) == (50, 10, 10)
    assert (
        repr(data) == "<MNIST: train=50, dev=10, test=10, input_shape=(1, 28, 28), num_classes=10>"
    )
    images = torch.from_numpy(TINY["train-images-idx3-ubyte.gz"][0]).unsqueeze(1) / 255
    labels = torch.from_numpy(TINY["train-labels-idx1-ubyte.gz"][0]).long()
    assert torch.equal(data.train.inputs, images[:50]) and torch.equal(data.dev.inputs, images[50:])
    assert torch.equal(data.train.targets, labels[:50]) and torch.equal(
        data.dev.targets, labels[50:]
    )
    test_images = torch.from_numpy(TINY["t10k-images-idx3-ubyte.gz"][0]).unsqueeze(1) / 255
    assert torch.equal(data.test.inputs, test_images)
    for split in (data.train, data.dev, data.test):
        assert split.inputs.dtype == torch.float32 and split.targets.dtype == torch.int64
        assert 0 <= split.inputs.min() and split.inputs.max() <= 1
    assert sorted(path.name for path in (tmp_path / "mnist").iterdir()) == sorted(NAMES)
    assert MNIST.is_cached(tmp_path, checksums=MD5S)

    requests.clear()
    again = load(tmp_path, server, "good")
    assert requests == []  # served from the cache
    assert torch.equal(again.train.inputs, data.train.inputs)
    offline = MNIST(tmp_path, download=False, checksums=MD5S, dev_size=10)
    assert torch.equal(offline.test.targets, data.test.targets)


@pytest.mark.parametrize("dev_size", [0, 1, 59, 60])
def test_split_sizes_follow_dev_size(tmp_path, server, dev_size):
    data = load(tmp_path, server, "good", dev_size=dev_size)
    assert (len(data.train), len(data.dev), len(data.test)) == (60 - dev_size, dev_size, 10)


def test_next_mirror_after_404_md5_mismatch_truncation_and_timeout(tmp_path, server, requests):
    mirrors = ["missing", "bad", "truncated", "slow", "good"]
    data = load(tmp_path, server, *mirrors, timeout=0.2)
    assert len(data.train) == 50
    assert requests == [f"/{mirror}/{name}" for name in NAMES for mirror in mirrors]
    assert sorted(path.name for path in (tmp_path / "mnist").iterdir()) == sorted(NAMES)


def test_all_mirrors_failing_names_each_failure(tmp_path, server):
    mirrors = ["missing", "bad", "truncated"]
    with pytest.raises(RuntimeError) as error:
        load(tmp_path, server, *mirrors)
    message = str(error.value)
    name = NAMES[0]
    assert f"Could not download {name} from any mirror" in message
    assert f"{server.url('missing')}{name}: HTTPError: HTTP Error 404" in message
    assert f"{server.url('bad')}{name}: _ChecksumError: the file's md5 is" in message
    assert f"{server.url('truncated')}{name}: ConnectionError: got " in message
    assert_tells_what_to_put_where(message, tmp_path / "mnist")
    # atomic writes: the failed downloads left no file behind, not even a temporary one
    assert list((tmp_path / "mnist").iterdir()) == []


def test_corrupt_cached_file_is_fetched_again(tmp_path, server, requests):
    load(tmp_path, server, "good")
    corrupt = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    corrupt.write_bytes(FILES[corrupt.name][:-7])
    assert not MNIST.is_cached(tmp_path, checksums=MD5S)
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.gz \(corrupt"):
        MNIST(tmp_path, download=False, checksums=MD5S, dev_size=10)

    requests.clear()
    data = load(tmp_path, server, "good")
    assert requests == [f"/good/{corrupt.name}"]
    assert corrupt.read_bytes() == FILES[corrupt.name]
    assert MNIST.is_cached(tmp_path, checksums=MD5S) and len(data.test) == 10


def test_offline_error_says_which_files_go_where(tmp_path):
    mirror = closed_port_url()
    with pytest.raises(RuntimeError, match="Could not download") as error:
        MNIST(tmp_path, mirrors=mirror, checksums=MD5S, progress=False, timeout=5)
    message = str(error.value)
    assert f"{mirror}{NAMES[0]}: URLError" in message
    assert_tells_what_to_put_where(message, tmp_path / "mnist")
    assert f"e.g. from {mirror}" in message
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_false_without_cache_says_which_files_go_where(tmp_path, server, requests):
    with pytest.raises(FileNotFoundError, match="download=False") as error:
        load(tmp_path, server, "good", download=False)
    assert_tells_what_to_put_where(str(error.value), tmp_path / "mnist")
    assert "(missing)" in str(error.value)
    assert requests == []
    assert not (tmp_path / "mnist").exists()
    assert not MNIST.is_cached(tmp_path, checksums=MD5S)


def test_file_mirror_and_default_checksums_are_checked(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    for name, data in FILES.items():
        (served / name).write_bytes(data)
    data = MNIST(tmp_path / "root", mirrors=served.as_uri(), checksums=MD5S, dev_size=10)
    assert len(data.train) == 50
    # the published md5s reject the tiny files, so nothing is cached
    with pytest.raises(RuntimeError, match="md5 is") as error:
        MNIST(tmp_path / "other", mirrors=served.as_uri(), progress=False)
    assert list((tmp_path / "other" / "mnist").iterdir()) == []
    assert CHECKSUMS["train-images-idx3-ubyte.gz"] in str(error.value)


def test_progress_bar_only_when_asked(tmp_path, server, capsys):
    import ipykernel.ipkernel  # noqa: F401 - imported (as by nbclient), yet no kernel runs here

    load(tmp_path / "quiet", server, "good", progress=None)
    assert "t10k-labels-idx1-ubyte.gz" not in capsys.readouterr().err  # stderr is no terminal
    load(tmp_path / "loud", server, "good", progress=True)
    assert "t10k-labels-idx1-ubyte.gz" in capsys.readouterr().err


def test_cache_folder(monkeypatch, tmp_path):
    assert MNIST.folder(tmp_path) == tmp_path / "mnist"
    monkeypatch.setenv("NPFL_DATA", str(tmp_path / "data"))
    assert MNIST.folder() == tmp_path / "data" / "mnist"
    monkeypatch.delenv("NPFL_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert MNIST.folder() == tmp_path / "cache" / "npfl_lib" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert MNIST.folder() == tmp_path / "home" / ".cache" / "npfl_lib" / "mnist"
    assert not MNIST.is_cached()


def test_defaults():
    assert MIRRORS[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert len(MIRRORS) == 3 and set(CHECKSUMS) == set(NAMES)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mirrors": ["ftp://example.com/mnist/"]}, ValueError, "mirrors must be URLs"),
        ({"mirrors": ["example.com/mnist/"]}, ValueError, "mirrors must be URLs"),
        ({"mirrors": [None]}, ValueError, "mirrors must be URLs"),
        ({"mirrors": []}, ValueError, "mirrors must list at least one URL"),
        ({"checksums": {NAMES[0]: "0" * 32}}, ValueError, "checksums must map exactly"),
        ({"checksums": [1, 2, 3, 4]}, ValueError, "checksums must map exactly"),
        ({"dev_size": -1}, ValueError, "dev_size must be an integer >= 0"),
        ({"dev_size": 61}, ValueError, "dev_size must be at most the 60 training images"),
        ({"dev_size": 5.0}, TypeError, "dev_size must be an int"),
        ({"timeout": 0}, ValueError, "timeout must lie in"),
    ],
)
def test_bad_arguments(tmp_path, server, kwargs, error, match):
    kwargs = {"mirrors": [server.url("good")], **kwargs}
    with pytest.raises(error, match=match):
        MNIST(tmp_path, checksums=kwargs.pop("checksums", MD5S), progress=False, **kwargs)


def test_wrong_files_with_matching_checksums_are_rejected(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    bad = tiny_mnist(side=27)
    for name, (_, data) in bad.items():
        (folder / name).write_bytes(data)
    checksums = {name: hashlib.md5(data).hexdigest() for name, (_, data) in bad.items()}
    with pytest.raises(ValueError, match=r"must hold uint8 images of shape \(N, 28, 28\)"):
        MNIST(tmp_path, download=False, checksums=checksums, dev_size=10)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(FILES["t10k-images-idx3-ubyte.gz"])
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(idx_bytes(np.full(10, 10, dtype=np.uint8))))
    with pytest.raises(ValueError, match="must hold 10 uint8 labels 0..9"):
        _read_split(folder, "t10k")


# The IDX parser.


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from(list(IDX_CODES)),
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    zipped=st.booleans(),
)
def test_read_idx_round_trip(tmp_path_factory, dtype, shape, zipped):
    array = np.random.default_rng(len(shape)).normal(0, 1000, shape).astype(dtype)
    path = tmp_path_factory.mktemp("idx") / ("data.idx.gz" if zipped else "data.idx")
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if zipped else data)
    values = read_idx(path)
    assert values.dtype == torch.from_numpy(array).dtype
    np.testing.assert_array_equal(values.numpy(), array)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not an IDX file: its magic number is 0x,"),
        (b"\x00\x01\x08\x01", "not an IDX file: its magic number is 0x00010801"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x00", "not an IDX file: its magic number is 0x00000701"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "truncated: it ends inside its header of 16 bytes"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x03\x01\x02", r"truncated: its header promises \(3,\)"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x01\x00\x00\x00", "truncated: .* 12 bytes in all, but it"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", r"too long: .*\(1,\) values of type uint8"),
    ],
)
def test_read_idx_rejects_bad_files(tmp_path, data, match):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=match):
        read_idx(path)


def test_read_idx_rejects_broken_gzip(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(FILES["t10k-labels-idx1-ubyte.gz"][:-20])
    with pytest.raises(ValueError, match="is not a complete gzip file"):
        read_idx(path)
    path.write_bytes(b"plain bytes")
    with pytest.raises(ValueError, match="is not a complete gzip file"):
        read_idx(path)


# The real files, where this machine has them.

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no MNIST files in {REAL}")


@needs_real
def test_real_md5s_match_the_published_ones():
    for path in REAL.glob("*.gz"):
        assert hashlib.md5(path.read_bytes()).hexdigest() == CHECKSUMS[path.name]


@needs_real
def test_real_t10k_split():
    test = _read_split(REAL, "t10k")
    assert test.inputs.shape == (10000, 1, 28, 28) and test.inputs.dtype == torch.float32
    assert test.inputs.min() == 0 and test.inputs.max() == 1
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert torch.bincount(test.targets).tolist() == counts
    assert test.targets[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    images = read_idx(REAL / "t10k-images-idx3-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == torch.uint8


@needs_real
def test_real_train_labels():
    labels = read_idx(REAL / "train-labels-idx1-ubyte.gz")
    counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert labels.dtype == torch.uint8 and torch.bincount(labels.long()).tolist() == counts
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]

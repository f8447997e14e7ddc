"""Per-class checkpoints in the run folder, so a crashed driver can resume.

``RUN/checkpoints/manifest.json`` records what the run fits (settings, data digests, layout,
classes); ``class-<label>.npz`` holds one finished binary fit (coefficients, intercept and
its record as JSON text). Every file is written atomically, the manifest first, so a
checkpoint on disk is always whole. ``distrib train --resume RUN`` refits only the classes
without one, after checking that nothing the model depends on has changed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from distrib.config import TrainConfig
from distrib.errors import ConfigError, OutputError
from distrib.files import read_json, storage_error, write_json, write_npz
from distrib.parallel.dispatch import BinaryFit

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "manifest.json"
#: A multinomial fit's evaluations, one record each (`EvaluationLog`).
EVALUATION_LOG = "multinomial-evaluations.log"
# A record: magic, payload length, CRC-32 of the payload; then the payload: the sha256 of
# the coefficients asked for, the objective (float64) and its gradient (float64s).
_RECORD = struct.Struct("<4sII")
_MAGIC = b"DEV1"
RUN_FILES = ("model.npz", "model.json", "metrics.json")


def refuse_finished(run_dir: str | Path) -> None:
    """Raise `OutputError` when ``run_dir`` holds a finished run: its ``metrics.json``,
    written last (a run stopped between ``model.npz`` and ``metrics.json`` still has its
    checkpoints, and resumes)."""
    if (Path(run_dir) / RUN_FILES[-1]).exists():
        raise OutputError(f"{run_dir} is a finished run ({RUN_FILES[-1]}): nothing to resume")


def _describe_difference(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(saved) | set(wanted)):
            out += _describe_difference(saved.get(key), wanted.get(key), f"{prefix}{key}.")
        return out
    if saved != wanted:
        return [f"{prefix.rstrip('.')}: checkpoint has {saved!r}, this run {wanted!r}"]
    return []


def _resume_hint(run_dir: Path) -> str:
    """How a run stopped by its storage goes on once there is space again."""
    return f"free space there, then `distrib train --resume {run_dir}` goes on from what is kept"


class Checkpoints:
    """The ``checkpoints`` folder of one run."""

    def __init__(self, run_dir: str | Path) -> None:
        self.folder = Path(run_dir) / CHECKPOINT_DIR

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        """The saved manifest; `OutputError` if missing or unreadable."""
        try:
            data = read_json(self.manifest_path)
        except FileNotFoundError as exc:
            raise OutputError(
                f"{self.folder.parent} holds no checkpoint ({self.manifest_path} is missing): "
                "it is not an interrupted run; train into a new --out instead"
            ) from exc
        except (OSError, ValueError) as exc:
            raise OutputError(f"{self.manifest_path} is unreadable ({exc})") from exc
        if not isinstance(data, dict):
            raise OutputError(f"{self.manifest_path} is not a checkpoint manifest")
        return data

    def begin(self, manifest: dict[str, Any], resume: bool) -> None:
        """Write the manifest of a new run, or check it against the saved one on resume."""
        if resume:
            differences = _describe_difference(self.manifest(), manifest)
            if differences:
                raise ConfigError(
                    f"cannot resume {self.folder.parent}: "
                    + "; ".join(differences[:4])
                    + ". Resume with the checkpoint's settings (leave the flags out) and data, "
                    "or train into a new --out"
                )
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.manifest_path, manifest)
        except OSError as exc:
            raise OutputError(f"cannot write checkpoints in {self.folder}: {exc}") from exc

    def save(self, fit: BinaryFit) -> None:
        """Checkpoint one finished class (atomically)."""
        path = self.folder / f"class-{fit.label}.npz"
        try:
            write_npz(
                path,
                coef=fit.coef,
                intercept=np.array([fit.intercept]),
                record=np.array(json.dumps(fit.record())),
            )
        except OSError as exc:
            raise storage_error(
                "a checkpoint", path, exc, _resume_hint(self.folder.parent)
            ) from exc

    def load(self) -> dict[int, BinaryFit]:
        """Every checkpointed class; an unreadable file is skipped (that class is refit)."""
        fits: dict[int, BinaryFit] = {}
        for path in sorted(self.folder.glob("class-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as npz:
                    record = json.loads(str(npz["record"]))
                    known = {k: v for k, v in record.items() if k in BinaryFit.__dataclass_fields__}
                    fit = BinaryFit(
                        **{**known, "coef": npz["coef"], "intercept": float(npz["intercept"][0])}
                    )
            except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
                continue
            fits[fit.label] = fit
        return fits

    def evaluation_log(self, resume: bool) -> EvaluationLog:
        """The multinomial fit's evaluation log in this folder, kept and replayed
        (``resume``) or begun anew."""
        return EvaluationLog(self.folder / EVALUATION_LOG, resume)

    def remove(self) -> None:
        """Delete the checkpoints once the run's final files are written."""
        shutil.rmtree(self.folder, ignore_errors=True)


class EvaluationLog:
    """Every evaluation of a multinomial fit, appended as it is made, so that a resumed fit
    replays them (`distrib.linear.multinomial.Journal`).

    Append-only, one record per evaluation with its own checksum, flushed as written: a
    driver killed mid-write leaves at most a torn last record, which is dropped (and cut
    off) on resume. A whole record whose checksum fails, or a resumed fit that asks for
    other coefficients than the log's, means the log is not this run's: refused, naming
    the evaluation.

    Parameters
    ----------
    path : path
        The log file, in the run's checkpoints folder.
    resume : bool
        Keep and replay what ``path`` holds; else start it anew.
    """

    def __init__(self, path: str | Path, resume: bool) -> None:
        self.path = Path(path)
        self.logged: list[tuple[bytes, float, np.ndarray]] = []
        self.replayed = 0
        self.replay_seconds = 0.0
        #: Seconds spent logging evaluations (digest, checksum, write and flush).
        self.append_seconds = 0.0
        self._replay_started: float | None = None
        end = 0
        if resume and self.path.exists():
            self.logged, end = self._read()
        try:
            self._file = self.path.open("r+b" if end else "wb")
            self._file.truncate(end)  # a torn last record goes
            self._file.seek(end)
        except OSError as exc:
            raise OutputError(f"cannot write the evaluation log {self.path}: {exc}") from exc

    def _read(self) -> tuple[list[tuple[bytes, float, np.ndarray]], int]:
        data = self.path.read_bytes()
        records: list[tuple[bytes, float, np.ndarray]] = []
        at = 0
        while at + _RECORD.size <= len(data):
            magic, size, checksum = _RECORD.unpack_from(data, at)
            payload = data[at + _RECORD.size : at + _RECORD.size + size]
            if magic != _MAGIC:
                raise self._refusal(len(records), "is not a record of an evaluation log")
            if len(payload) < size:
                break  # torn: the driver stopped while writing it
            if zlib.crc32(payload) != checksum or size < 40 or (size - 40) % 8:
                raise self._refusal(len(records), "fails its checksum")
            loss = struct.unpack_from("<d", payload, 32)[0]
            records.append((payload[:32], loss, np.frombuffer(payload[40:], dtype="<f8")))
            at += _RECORD.size + size
        return records, at

    def _refusal(self, index: int, what: str) -> ConfigError:
        return ConfigError(
            f"cannot resume {self.path.parent.parent}: evaluation {index + 1} in {self.path} "
            f"{what}: it is not this run's log. Train into a new --out"
        )

    def replay(self, index: int, w: np.ndarray) -> tuple[float, np.ndarray] | None:
        """The logged objective and gradient of evaluation ``index``; None past the log."""
        if index >= len(self.logged):
            return None
        digest, loss, grad = self.logged[index]
        if hashlib.sha256(np.ascontiguousarray(w, dtype="<f8").tobytes()).digest() != digest:
            raise self._refusal(
                index,
                "was made at other coefficients than this run asks for (other data, "
                "settings or library versions)",
            )
        now = time.perf_counter()
        self._replay_started = now if self._replay_started is None else self._replay_started
        self.replayed += 1
        self.replay_seconds = now - self._replay_started
        return loss, grad.copy()

    def append(self, w: np.ndarray, loss: float, grad: np.ndarray) -> None:
        """Log one evaluation (written and flushed before the fit goes on)."""
        started = time.perf_counter()
        payload = b"".join(
            (
                hashlib.sha256(np.ascontiguousarray(w, dtype="<f8").tobytes()).digest(),
                struct.pack("<d", loss),
                np.ascontiguousarray(grad, dtype="<f8").tobytes(),
            )
        )
        try:
            self._file.write(_RECORD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload)
            self._file.flush()
        except OSError as exc:  # a torn record is dropped on resume
            hint = _resume_hint(self.path.parent.parent)
            raise storage_error("the evaluation log", self.path, exc, hint) from exc
        self.append_seconds += time.perf_counter() - started

    @property
    def _layout_path(self) -> Path:
        return self.path.with_name(self.path.name + ".layout.json")

    def layout(self) -> dict[str, Any] | None:
        """The resumed fit's row blocks and the order of their sums, if it recorded them."""
        if not self.logged:
            return None
        try:
            layout = read_json(self._layout_path)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise OutputError(f"{self._layout_path} is unreadable ({exc})") from exc
        if not isinstance(layout, dict) or not {"blocks", "tree"} <= set(layout):
            raise OutputError(f"{self._layout_path} is not a block layout")
        return layout

    def save_layout(self, blocks: int, tree: Any) -> None:
        """Record the fit's blocks and the order of their sums (kept when resuming)."""
        if self.layout() is None:
            layout = {"blocks": blocks, "tree": [list(g) for g in tree]}
            try:
                write_json(self._layout_path, layout)
            except OSError as exc:
                raise storage_error(
                    "the evaluation log's layout", self._layout_path, exc, "free space there"
                ) from exc

    def close(self) -> None:
        """Close the log. A record whose write failed (a full disk: `append` said so) may
        still sit in the buffer; it is dropped, as a torn record is on resume."""
        try:
            self._file.close()
        except OSError:
            if not self._file.closed:
                raise


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The settings of an interrupted run, with any explicitly given ones on top.

    An override that differs from the checkpoint is kept, so that resuming refuses it with
    a message naming the setting.
    """
    refuse_finished(run_dir)
    settings = Checkpoints(run_dir).manifest().get("settings")
    if not isinstance(settings, dict):
        raise OutputError(f"{Checkpoints(run_dir).manifest_path} has no settings")
    given = {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig.from_dict({**settings, **given})

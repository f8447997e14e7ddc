"""Per-class checkpoints in the run folder, so a crashed driver can resume.

``RUN/checkpoints/manifest.json`` records what the run fits (settings, data digests, layout,
classes); ``class-<label>.npz`` holds one finished binary fit (coefficients, intercept and
its record as JSON text). Every file is written atomically, the manifest first, so a
checkpoint on disk is always whole. ``distrib train --resume RUN`` refits only the classes
without one, after checking that nothing the model depends on has changed.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from distrib.config import TrainConfig
from distrib.errors import ConfigError, OutputError
from distrib.files import read_json, write_json, write_npz
from distrib.parallel.dispatch import BinaryFit

CHECKPOINT_DIR = "checkpoints"
MANIFEST = "manifest.json"
RUN_FILES = ("model.npz", "model.json", "metrics.json")


def refuse_finished(run_dir: str | Path) -> None:
    """Raise `OutputError` when ``run_dir`` already holds a finished run's files."""
    taken = [name for name in RUN_FILES if (Path(run_dir) / name).exists()]
    if taken:
        raise OutputError(f"{run_dir} is a finished run ({', '.join(taken)}): nothing to resume")


def _describe_difference(saved: Any, wanted: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(wanted, dict):
        out = []
        for key in sorted(set(saved) | set(wanted)):
            out += _describe_difference(saved.get(key), wanted.get(key), f"{prefix}{key}.")
        return out
    if saved != wanted:
        return [f"{prefix.rstrip('.')}: checkpoint has {saved!r}, this run {wanted!r}"]
    return []


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
        write_npz(
            self.folder / f"class-{fit.label}.npz",
            coef=fit.coef,
            intercept=np.array([fit.intercept]),
            record=np.array(json.dumps(fit.record())),
        )

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

    def remove(self) -> None:
        """Delete the checkpoints once the run's final files are written."""
        shutil.rmtree(self.folder, ignore_errors=True)


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

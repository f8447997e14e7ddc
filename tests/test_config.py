from __future__ import annotations

import pytest

from distrib.config import ClusterConfig, TrainConfig
from distrib.errors import ConfigError


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"C": 0}, r"C must be a positive finite number, got 0"),
        ({"C": -1.5}, r"C must be a positive finite number, got -1.5"),
        ({"C": float("inf")}, r"C must be a positive finite number"),
        ({"l1_ratio": 1.5}, r"l1_ratio must lie in \[0, 1\].*got 1.5"),
        ({"l1_ratio": -0.1}, r"l1_ratio must lie in \[0, 1\]"),
        ({"l1_ratio": 1.0}, r"solver 'newton-cg' supports only l1_ratio=0.*use --solver saga"),
        ({"solver": "liblinear", "l1_ratio": 0.5}, r"'liblinear' needs l1_ratio 0 or 1"),
        ({"dataset": "cifar"}, r"unknown dataset 'cifar': expected one of 'mnist', 'digits'"),
        ({"split": "random"}, r"unknown split 'random'"),
        ({"scale": "std"}, r"unknown scale 'std'"),
        ({"solver": "adam"}, r"unknown solver 'adam'"),
        ({"class_weight": "auto"}, r"unknown class_weight 'auto'"),
        ({"tol": 0}, r"tol must be a positive number"),
        ({"max_iter": 0}, r"max_iter must be a whole number >= 1"),
        ({"dataset": "digits", "split": "canonical"}, r"'canonical' exists only for MNIST"),
    ],
)
def test_bad_settings_are_refused_with_a_message(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes)


def test_defaults_are_the_measured_fast_settings() -> None:
    config = TrainConfig()
    assert (config.dataset, config.split, config.scale) == ("mnist", "notebook", "unit")
    assert config.estimator_params() == {
        "C": 0.1,
        "l1_ratio": 0.0,
        "solver": "newton-cg",
        "tol": 1e-4,
        "max_iter": 100,
        "fit_intercept": True,
        "class_weight": None,
        "random_state": 0,
    }


def test_notebook_preset_per_dataset_and_overrides() -> None:
    mnist = TrainConfig.from_preset("notebook")
    assert (mnist.C, mnist.l1_ratio, mnist.solver, mnist.tol, mnist.max_iter, mnist.scale) == (
        50.0,
        1.0,
        "saga",
        0.01,
        1000,
        "raw",
    )
    digits = TrainConfig.from_preset("notebook", dataset="digits")
    assert (digits.C, digits.l1_ratio, digits.solver, digits.max_iter, digits.scale) == (
        50.0,
        0.0,
        "saga",
        10_000,
        "raw",
    )
    assert TrainConfig.from_preset("notebook", C=3.0, tol=None).C == 3.0
    with pytest.raises(ConfigError, match="unknown preset 'paper'"):
        TrainConfig.from_preset("paper")


def test_settings_round_trip_through_dict() -> None:
    config = TrainConfig(dataset="digits", C=2.0, class_weight="balanced")
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown setting"):
        TrainConfig.from_dict({**config.to_dict(), "gamma": 1})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": 0}, "workers must be >= 1"),
        ({"threads_per_worker": 0}, "threads per worker must be >= 1"),
        ({"wait_workers": 0}, "wait_workers must be >= 1"),
        ({"connect_timeout": 0}, "connect_timeout must be > 0"),
        ({"worker_timeout": -1}, "worker_timeout must be > 0"),
    ],
)
def test_bad_cluster_settings(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClusterConfig(**changes)


def test_one_spec_gives_the_defaults_of_the_config_the_estimator_and_the_cli() -> None:
    """Issue 13: defaults declared once (SETTINGS) and read by every surface."""
    import ast
    import inspect
    import re

    from click.testing import CliRunner

    from distrib.cli import cli
    from distrib.config import ESTIMATOR_PARAMS, SETTINGS
    from distrib.estimator import DaskLogisticRegression

    config = TrainConfig()
    assert {name: getattr(config, name) for name in SETTINGS} == {
        name: s.default for name, s in SETTINGS.items()
    }
    signature = inspect.signature(DaskLogisticRegression)
    assert tuple(signature.parameters) == ESTIMATOR_PARAMS
    for name in ESTIMATOR_PARAMS:
        assert signature.parameters[name].default == SETTINGS[name].default, name
    # the docstring states each default as the spec does
    doc = DaskLogisticRegression.__doc__ or ""
    for name in ESTIMATOR_PARAMS:
        stated = re.search(rf"^    {name} : .*default=(.+)$", doc, re.MULTILINE)
        assert stated is not None, f"{name} has no 'default=' in the docstring"
        assert ast.literal_eval(stated.group(1)) == SETTINGS[name].default, name
    help_text = " ".join(CliRunner().invoke(cli, ["train", "--help"]).output.split())
    for name, setting in SETTINGS.items():
        assert "--" + name.replace("_", "-") in help_text
        assert " ".join(setting.help.split()) in help_text, name

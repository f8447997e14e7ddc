"""`DaskLogisticRegressionCV`: C chosen by cross-validation, as scikit-learn's
`LogisticRegressionCV` chooses it, each fit distrib's.

Every (fold, C) model is a `DaskLogisticRegression` fit of the fold's training rows, scored on
its held-out rows; the C of the best mean score is refitted on all rows (``refit=True``), or
each fold's best models are averaged (``refit=False``), as scikit-learn does. The attributes
follow scikit-learn's new layout (``use_legacy_attributes=False``): ``C_`` a float,
``scores_`` an array of (fold, C), without its l1-ratio axis (the penalty is fixed here).

Multinomial: a fold's training rows are cut into blocks on the workers once for all its Cs,
fitted from the smallest C up, each from the one before (a warm start, as scikit-learn's
path does). Each (fold, C) fit still makes its own passes over its rows; passes shared by
all of them at once are the next step (issue 36).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from numbers import Integral
from typing import Any

import dask.array as da
import numpy as np
from sklearn.metrics import check_scoring
from sklearn.model_selection import check_cv
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from distrib.config import ESTIMATOR_PARAMS, SETTINGS
from distrib.errors import ConfigError, DataError
from distrib.estimator import DaskLogisticRegression, check_dask_rows
from distrib.parallel.fitting import by_class_index, current_client, fit_multinomial_configs

#: What an integer ``Cs`` spans, as scikit-learn's: ``np.logspace(-4, 4, Cs)``.
CS_DECADES = (-4, 4)


def c_grid(Cs: int | Any) -> np.ndarray:
    """The Cs to try: ``Cs`` values spaced evenly in log between 1e-4 and 1e4 for an
    integer (scikit-learn's grid), else the given values, each checked."""
    if isinstance(Cs, Integral) and not isinstance(Cs, bool):
        if Cs < 1:
            raise ConfigError(f"Cs={Cs}: give a count of at least 1, or a list of Cs")
        return np.logspace(*CS_DECADES, int(Cs))
    try:
        grid = np.asarray(Cs, dtype=np.float64).ravel()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"Cs={Cs!r}: give a count, or a list of positive numbers") from exc
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid <= 0):
        raise ConfigError(f"Cs={Cs!r}: every C must be a positive number")
    return grid


class DaskLogisticRegressionCV(DaskLogisticRegression):
    """Logistic regression whose C is chosen by cross-validation; every fit distrib's.

    Parameters
    ----------
    Cs : int or array-like of float, default=10
        The Cs to try: a count (evenly spaced in log between 1e-4 and 1e4, as scikit-learn's
        ``LogisticRegressionCV``), or the values.
    cv : int, cross-validation splitter or None, default=None
        Folds: ``None`` is 5, an integer is that many stratified folds (scikit-learn's
        ``check_cv`` for a classifier), or any splitter.
    scoring : str, callable or None, default=None
        The held-out score to maximise (scikit-learn's scorer names); ``None``: accuracy.
    refit : bool, default=True
        True: fit the C of the best mean score on all rows. False: average each fold's
        best model (coefficients, intercepts and C), as scikit-learn does.
    strategy, l1_ratio, solver, tol, max_iter, fit_intercept, class_weight, random_state
        As `DaskLogisticRegression`'s, for every fit.

    Attributes
    ----------
    Cs_ : ndarray of shape (n_cs,)
    C_ : float
        The chosen C (``refit=False``: the mean of each fold's best C).
    scores_ : ndarray of shape (n_folds, n_cs)
        Each fold's held-out score at each C.
    coefs_paths_ : ndarray of shape (n_folds, n_cs, n_rows, n_features)
        Each fold's coefficients at each C (``n_rows``: the classes, or 1 for two).
    intercepts_paths_ : ndarray of shape (n_folds, n_cs, n_rows)
    n_iter_ : ndarray of shape (n_folds, n_cs)
        Iterations of each fold's fit at each C (one-vs-rest: its longest class's).
    classes_, coef_, intercept_, n_features_in_
        As `DaskLogisticRegression`'s, of the refitted (or averaged) model.
    """

    def __init__(
        self,
        *,
        Cs: int | Any = 10,
        cv: int | Any = None,
        scoring: str | Callable[..., float] | None = None,
        refit: bool = True,
        strategy: str = SETTINGS["strategy"].default,
        l1_ratio: float = SETTINGS["l1_ratio"].default,
        solver: str = SETTINGS["solver"].default,
        tol: float = SETTINGS["tol"].default,
        max_iter: int = SETTINGS["max_iter"].default,
        fit_intercept: bool = SETTINGS["fit_intercept"].default,
        class_weight: str | dict[Any, float] | None = SETTINGS["class_weight"].default,
        random_state: int | None = SETTINGS["random_state"].default,
    ) -> None:
        self.Cs = Cs
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.strategy = strategy
        self.l1_ratio = l1_ratio
        self.solver = solver
        self.tol = tol
        self.max_iter = max_iter
        self.fit_intercept = fit_intercept
        self.class_weight = class_weight
        self.random_state = random_state

    def _estimator(self, C: float) -> DaskLogisticRegression:
        """A `DaskLogisticRegression` with this estimator's settings and ``C``."""
        settings = {name: getattr(self, name) for name in ESTIMATOR_PARAMS if name != "C"}
        return DaskLogisticRegression(C=float(C), **settings)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> DaskLogisticRegressionCV:
        """Fit every (fold, C) model, choose C, and refit it (or average).

        Parameters
        ----------
        X : array-like, sparse matrix or Dask array of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        sample_weight : array-like of shape (n_samples,), optional
            Weighs the rows of every fit (not the held-out scores).
        """
        Cs = c_grid(self.Cs)
        self._estimator(Cs[0])._config()  # the shared settings, checked before any fit
        if isinstance(y, da.Array):
            y = y.compute()
        if isinstance(sample_weight, da.Array):
            sample_weight = sample_weight.compute()
        if isinstance(X, da.Array):
            check_dask_rows(X)
        else:
            X, y = validate_data(self, X, y, accept_sparse="csr", dtype=[np.float64, np.float32])
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != X.shape[0]:
            raise DataError(f"y has shape {y.shape}, X has {X.shape[0]} rows: they must match")
        check_classification_targets(y)
        classes = np.unique(y)
        sample_weight = self._check_weights(sample_weight, np.empty((len(y), 0)))
        folds = [
            (np.sort(train), np.sort(test))
            for train, test in check_cv(self.cv, y, classifier=True).split(np.zeros((len(y), 1)), y)
        ]
        scorer = check_scoring(self._estimator(Cs[0]), scoring=self.scoring)
        n_rows = 1 if len(classes) == 2 else len(classes)
        n_features = int(X.shape[1])
        scores = np.empty((len(folds), len(Cs)))
        coefs = np.empty((len(folds), len(Cs), n_rows, n_features))
        intercepts = np.empty((len(folds), len(Cs), n_rows))
        n_iter = np.empty((len(folds), len(Cs)), dtype=np.int64)
        n_blocks: int | None = None  # multinomial: the first fold's, kept by the others
        for f, (train, test) in enumerate(folds):
            weights = None if sample_weight is None else sample_weight[train]
            missing = np.setdiff1d(classes, y[train])
            if missing.size:
                raise DataError(
                    f"fold {f}'s training rows hold no sample of class(es) {missing.tolist()}: "
                    "use fewer folds, or a stratified splitter (cv=an integer)"
                )
            # sorted rows: a Dask array's come chunk by chunk, each from its own chunk
            fits, n_blocks = self._fold_fits(Cs, X[train], y[train], weights, classes, n_blocks)
            for c, fitted in fits:
                scores[f, c] = scorer(fitted, X[test], y[test])
                coefs[f, c], intercepts[f, c] = fitted.coef_, fitted.intercept_
                n_iter[f, c] = int(np.max(fitted.n_iter_))
        self.Cs_, self.scores_, self.n_iter_ = Cs, scores, n_iter
        self.coefs_paths_, self.intercepts_paths_ = coefs, intercepts
        if self.refit:
            best = int(np.argmax(scores.mean(axis=0)))
            self.C_ = float(Cs[best])
            final = self._estimator(self.C_).fit(X, y, sample_weight)
            for name in ("classes_", "coef_", "intercept_", "fit_records_", "solver_"):
                setattr(self, name, getattr(final, name))
        else:
            best_each = np.argmax(scores, axis=1)
            folds_index = np.arange(len(folds))
            self.C_ = float(np.mean(Cs[best_each]))
            self.classes_ = classes
            self.coef_ = coefs[folds_index, best_each].mean(axis=0)
            self.intercept_ = intercepts[folds_index, best_each].mean(axis=0)
            self.fit_records_, self.solver_ = [], {}
        self.n_features_in_ = n_features
        return self

    def _fold_fits(
        self,
        Cs: np.ndarray,
        X: Any,
        y: np.ndarray,
        weights: Any,
        classes: np.ndarray,
        n_blocks: int | None,
    ) -> tuple[list[tuple[int, DaskLogisticRegression]], int | None]:
        """Each C's index and its model fitted on one fold's training rows, and the blocks
        the next fold is cut into. Multinomial: the rows cut into blocks once for every C
        (``n_blocks``, else one per worker thread), the Cs fitted from the smallest (the
        most regularised) up, each from the one before (`fit_multinomial_configs`)."""
        if self.strategy != "multinomial":
            if isinstance(X, da.Array):  # every binary fit reads all rows: computed once
                X = X.compute()
            return [(c, self._estimator(C).fit(X, y, weights)) for c, C in enumerate(Cs)], None
        order = np.argsort(Cs, kind="stable")
        estimators = [self._estimator(Cs[c]) for c in order]
        codes = np.searchsorted(classes, y).astype(np.int64)
        client = current_client()
        if isinstance(X, da.Array) and client is None:
            X = X.compute()
        outcomes = fit_multinomial_configs(
            X, codes, len(classes), [e._config() for e in estimators], client=client,
            class_weight=by_class_index(self.class_weight, classes), sample_weight=weights,
            n_blocks=n_blocks,
        )  # fmt: skip
        for estimator, outcome in zip(estimators, outcomes, strict=True):
            estimator._take(outcome, classes, int(X.shape[1]))
        # Later folds are cut into as many blocks as the first, whatever workers are alive
        # when they are placed: a worker lost mid-search leaves every fit's bits alone.
        blocks = n_blocks or len(outcomes[0].records)
        return [(int(c), e) for c, e in zip(order, estimators, strict=True)], blocks

    def chosen(self) -> DaskLogisticRegression:
        """The fitted model as a `DaskLogisticRegression` at the chosen C (what `save`
        writes, and `DaskLogisticRegression.load` reads back)."""
        check_is_fitted(self)
        model = self._estimator(self.C_)
        for name in ("classes_", "coef_", "intercept_", "n_features_in_", "fit_records_"):
            setattr(model, name, getattr(self, name))
        model.n_iter_ = np.asarray([int(self.n_iter_.max())])
        model.solver_ = self.solver_
        return model

    def save(self, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
        """Write the chosen model (`chosen`) into the folder ``path``, with the search
        (Cs, each C's mean score, the chosen C) in ``model.json``'s ``cross_validation``."""
        search = {
            "Cs": self.Cs_.tolist(),
            "mean_scores": self.scores_.mean(axis=0).tolist(),
            "C": self.C_,
            "n_folds": int(self.scores_.shape[0]),
            "refit": bool(self.refit),
        }
        self.chosen().save(path, {"cross_validation": search, **(metadata or {})})

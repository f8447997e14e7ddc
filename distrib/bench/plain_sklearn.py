"""The plain scikit-learn script a user would write instead of ``distrib train``.

It loads the data (MNIST from distrib's cache, ``X.npy`` and ``y.npy``; or the 8x8
digits), makes the notebook's split, scales the pixels to [0, 1] as float32 and fits
``LogisticRegression(C=0.1)``: the multinomial fit on the dense rows (``--model
multinomial``, the default), or one binary fit per class with loky on CSR rows (``--model
ovr``: ``OneVsRestClassifier(n_jobs=...)``). It prints the test accuracy. ``distrib
bench`` times it as a process beside ``distrib train`` processes; run it alone with
``python -m distrib.bench.plain_sklearn --model ovr``.

Only numpy, SciPy and scikit-learn: nothing of distrib is imported.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", choices=("multinomial", "ovr"), default="multinomial")
    parser.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--data-home", default=os.environ.get("DISTRIB_DATA_HOME"))
    parser.add_argument("--n-jobs", type=int, default=2, help="loky processes for --model ovr")
    parser.add_argument("--max-iter", type=int, default=100)
    args = parser.parse_args(argv)
    if args.dataset == "mnist":
        home = Path(args.data_home or Path.home() / ".cache" / "distrib") / "mnist"
        X, y = np.load(home / "X.npy"), np.load(home / "y.npy")
        test_size, pixel_max = 1 / 7, 255
    else:
        X, y = load_digits(return_X_y=True)
        test_size, pixel_max = 0.25, 16
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=test_size, random_state=0)
    X_train = (X_train / np.float32(pixel_max)).astype(np.float32)
    X_test = (X_test / np.float32(pixel_max)).astype(np.float32)
    if args.model == "multinomial":
        model = LogisticRegression(C=0.1, max_iter=args.max_iter).fit(X_train, y_train)
    else:
        model = OneVsRestClassifier(
            LogisticRegression(C=0.1, max_iter=args.max_iter), n_jobs=args.n_jobs
        ).fit(sp.csr_matrix(X_train), y_train)
    print(f"test accuracy {model.score(X_test, y_test):.4f}")


if __name__ == "__main__":
    main()

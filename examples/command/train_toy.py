"""A toy training script for the command task: an sklearn MLP on the bundled 8x8 digits.

It knows nothing of hpo. It takes its hyperparameters as arguments (``--alpha`` falls back to
the ``HPO_PARAM_ALPHA`` environment variable), trains for ``--epochs`` epochs (a few seconds),
appends one row per epoch to ``metrics.csv`` (``epoch, train/loss, train/acc, val/loss,
val/acc, val/f1, f1_class_0 ... f1_class_9``) and writes ``metrics.json`` at the end
(``{"val": {"acc": ..., "loss": ..., "f1": ...}, "train": {...}, "per_class": {"f1": {...}}}``).
Both files land in the working directory, which the command task sets to the trial's output
directory. Under ``cv.folds=K`` it validates on fold ``$HPO_FOLD`` of a stratified K-fold split.

Run it alone::

    python examples/command/train_toy.py --lr 0.01 --hidden 64 --epochs 5

or swept, see README.md next to it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import accuracy_score, f1_score, log_loss
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.neural_network import MLPClassifier


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=1e-3, help="initial learning rate (Adam)")
    p.add_argument("--hidden", type=int, default=64, help="width of the hidden layer")
    p.add_argument("--alpha", type=float, default=float(os.environ.get("HPO_PARAM_ALPHA", 1e-4)),
                   help="L2 penalty (default: $HPO_PARAM_ALPHA or 1e-4)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--folds", type=int, default=int(os.environ.get("HPO_FOLDS", 1)),
                   help="k-fold cross-validation: number of folds (default: $HPO_FOLDS or 1)")
    p.add_argument("--fold", type=int, default=int(os.environ.get("HPO_FOLD", 0)),
                   help="the fold validated on (default: $HPO_FOLD or 0)")
    p.add_argument("--sleep", type=float, default=0.0, help="extra seconds per epoch (tests)")
    fail = os.environ.get("TOY_FAIL_AT_EPOCH")
    p.add_argument("--fail-at-epoch", type=int, default=int(fail) if fail else None,
                   help="exit with code 3 at this epoch (tests; default $TOY_FAIL_AT_EPOCH)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.lr <= 0 or args.epochs < 1:
        print(f"error: --lr={args.lr} and --epochs={args.epochs} must be positive",
              file=sys.stderr)
        return 2
    if not 0 <= args.fold < max(args.folds, 1):
        print(f"error: --fold={args.fold} is outside [0, --folds={args.folds})", file=sys.stderr)
        return 2
    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    if args.folds > 1:  # validate on fold `fold` of a stratified k-fold split
        splits = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed).split(x, y)
        tr, va = list(splits)[args.fold]
        x_tr, x_va, y_tr, y_va = x[tr], x[va], y[tr], y[va]
    else:
        x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, stratify=y,
                                                  random_state=args.seed)
    classes = np.arange(10)
    model = MLPClassifier(hidden_layer_sizes=(args.hidden,), learning_rate_init=args.lr,
                          alpha=args.alpha, batch_size=args.batch_size, random_state=args.seed)
    rng = np.random.default_rng(args.seed)
    columns = ["epoch", "train/loss", "train/acc", "val/loss", "val/acc", "val/f1",
               *(f"f1_class_{c}" for c in classes)]
    with open("metrics.csv", "w", newline="") as f:
        csv.writer(f).writerow(columns)
    row: dict[str, float] = {}
    per_class = np.zeros(len(classes))
    for epoch in range(args.epochs):
        if args.fail_at_epoch is not None and epoch == args.fail_at_epoch:
            print(f"simulated failure at epoch {epoch}", file=sys.stderr)
            return 3
        order = rng.permutation(len(y_tr))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for i in range(0, len(order), args.batch_size):
                idx = order[i:i + args.batch_size]
                model.partial_fit(x_tr[idx], y_tr[idx], classes=classes)
        p_tr, p_va = model.predict_proba(x_tr), model.predict_proba(x_va)
        pred = p_va.argmax(1)
        per_class = f1_score(y_va, pred, labels=classes, average=None, zero_division=0)
        row = {
            "train/loss": log_loss(y_tr, p_tr, labels=classes),
            "train/acc": accuracy_score(y_tr, p_tr.argmax(1)),
            "val/loss": log_loss(y_va, p_va, labels=classes),
            "val/acc": accuracy_score(y_va, pred),
            "val/f1": f1_score(y_va, pred, average="macro", zero_division=0),
        }
        with open("metrics.csv", "a", newline="") as f:
            csv.writer(f).writerow([epoch, *(f"{row[c]:.6g}" for c in columns[1:6]),
                                    *(f"{v:.6g}" for v in per_class)])
        print(f"epoch {epoch}: train/loss={row['train/loss']:.4f} val/acc={row['val/acc']:.4f}",
              flush=True)
        if args.sleep:
            time.sleep(args.sleep)
    summary = {
        "val": {"acc": row["val/acc"], "loss": row["val/loss"], "f1": row["val/f1"]},
        "train": {"acc": row["train/acc"], "loss": row["train/loss"]},
        "per_class": {"f1": {str(c): float(v) for c, v in zip(classes, per_class, strict=True)}},
        "params": int(sum(w.size for w in model.coefs_) + sum(b.size for b in model.intercepts_)),
    }
    with open("metrics.json", "w") as f:
        json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

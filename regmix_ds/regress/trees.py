"""The tree surrogates: `lightgbm` (RegMix's) and `bagged`, an average of LightGBM models.

* `lightgbm`: RegMix's settings (at most 1000 trees, learning rate 0.01, other settings
  LightGBM's defaults) plus row subsampling (`subsample` 0.8, LightGBM bagging). The tree
  count is chosen by k-fold cross-validation inside the training runs (early stopping on the
  mean fold loss), and the final model is refit on all runs with that count.
* `bagged`: `members` such models, each trained on every run with its own seed, so each tree
  of each member sees its own subsample of the runs; the prediction is their mean. Members
  trained on bootstrap resamples instead ranked worse in cross-validation on RegMix's runs
  (`python benchmarks/surrogates.py --bagging-variants`). The members are merged into one
  booster whose leaf values are divided by `members` (one model.txt, scored exactly by
  `regress.treescore`).
"""
from __future__ import annotations

import functools
from typing import Any

import lightgbm as lgb
import numpy as np

from regmix_ds.core.config import FitConfig
from regmix_ds.regress.surrogates import Candidate, Folds
from regmix_ds.regress.treescore import LeafBoxes, TopK, lowest_k


def lightgbm_params(settings: FitConfig, seed: int | None = None) -> dict[str, Any]:
    """LightGBM parameters: RegMix's (defaults but trees and learning rate), made deterministic."""
    params = {
        "objective": "regression",
        "metric": "l2",
        "learning_rate": settings.learning_rate,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "seed": settings.seed if seed is None else seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": settings.threads,
        "verbose": -1,
    }
    if settings.subsample < 1:
        params.update(bagging_fraction=settings.subsample, bagging_freq=1)
    return params


def train_booster(weights: np.ndarray, target: np.ndarray, settings: FitConfig, trees: int,
                  seed: int | None = None) -> lgb.Booster:
    """One booster trained with `lightgbm_params` for exactly `trees` rounds."""
    data = lgb.Dataset(weights, target, params={"verbose": -1})
    return lgb.train(lightgbm_params(settings, seed), data, num_boost_round=trees)


class TreeModel:
    """A LightGBM booster; `lowest_k` finds the best rows without scoring every tree of every row."""

    regressor = "lightgbm"
    smooth = False

    def __init__(self, booster: lgb.Booster, settings: FitConfig):
        self.booster = booster
        self.settings = settings

    @classmethod
    def fit(cls, weights: np.ndarray, target: np.ndarray, settings: FitConfig, trees: int) -> TreeModel:
        """A booster trained with `lightgbm_params(settings)` for exactly `trees` rounds."""
        return cls(train_booster(weights, target, settings, trees), settings)

    def refit(self, weights: np.ndarray, target: np.ndarray) -> TreeModel:
        """The same settings and tree count on other runs."""
        return TreeModel.fit(weights, target, self.settings, self.trees)

    @property
    def trees(self) -> int:
        return self.booster.num_trees()

    def predict(self, weights: np.ndarray) -> np.ndarray:
        """The booster's prediction for each row of `weights`, with all its trees."""
        return self.booster.predict(np.asarray(weights, dtype=np.float64), num_iteration=self.trees)

    @functools.cached_property
    def boxes(self) -> LeafBoxes | None:
        """The trees' leaf boxes for `lowest_k` (built on first use: about a second for 1000 trees)."""
        return LeafBoxes.from_booster(self.booster)

    def lowest_k(self, weights: np.ndarray, k: int, progress: bool = False) -> TopK:
        """The k lowest-predicted rows, best first, ranked as full prediction ranks them but pruned by `boxes`."""
        return lowest_k(self.booster, weights, k, boxes=self.boxes, progress=progress)


class BaggedTrees(TreeModel):
    """`members` boosters of `member_trees` trees each, averaged: one merged booster."""

    regressor = "bagged"

    def __init__(self, booster: lgb.Booster, settings: FitConfig, member_trees: int):
        super().__init__(booster, settings)
        self.member_trees = member_trees

    @classmethod
    def fit(cls, weights: np.ndarray, target: np.ndarray, settings: FitConfig, trees: int) -> BaggedTrees:
        """`settings.members` boosters with seeds seed, seed + 1, ..., merged."""
        members = [train_booster(weights, target, settings, trees, settings.seed + m) for m in range(settings.members)]
        return cls(lgb.Booster(model_str=merged_model_text(members)), settings, trees)

    def refit(self, weights: np.ndarray, target: np.ndarray) -> BaggedTrees:
        """The same members, settings and tree count on other runs."""
        return BaggedTrees.fit(weights, target, self.settings, self.member_trees)


def merged_model_text(boosters: list[lgb.Booster]) -> str:
    """One LightGBM model whose prediction is the mean of `boosters`' (same features and objective).

    LightGBM sums the leaf values of every tree, so the trees of all boosters one after another,
    each leaf value divided by their number, predict the mean. Only the first booster's header is
    kept, without `tree_sizes` (an optional index LightGBM then rebuilds by parsing in order).
    """
    texts = [booster.model_to_string() for booster in boosters]
    header = texts[0].split("\nTree=", 1)[0]
    header = "\n".join(line for line in header.splitlines() if not line.startswith("tree_sizes="))
    share = 1.0 / len(boosters)
    blocks = [block for text in texts for block in text.split("\nend of trees", 1)[0].split("\nTree=")[1:]]
    lines = [header, ""]
    for number, block in enumerate(blocks):
        lines.append(f"Tree={number}")
        lines += [_scaled(line, share) for line in block.splitlines()[1:]]
    return "\n".join(lines) + "\nend of trees" + texts[0].split("\nend of trees", 1)[1]


def _scaled(line: str, share: float) -> str:
    # internal_value (a node's mean output, used by SHAP) scales with the leaves it summarises.
    if not line.startswith(("leaf_value=", "internal_value=")):
        return line
    key, values = line.split("=", 1)
    return key + "=" + " ".join(repr(float(v) * share) for v in values.split())


def cross_validated_trees(regressor: str, weights: np.ndarray, target: np.ndarray, settings: FitConfig,
                          folds: Folds) -> Candidate:
    """The tree count from LightGBM's k-fold early stopping, out-of-fold predictions, the model on all runs.

    Both tree surrogates keep the count chosen for one booster (the bagged members share it).
    """
    result = lgb.cv(
        lightgbm_params(settings),
        lgb.Dataset(weights, target, params={"verbose": -1}),
        num_boost_round=settings.trees,
        folds=folds,
        callbacks=[lgb.early_stopping(settings.early_stopping, verbose=False)],
        return_cvbooster=True,
    )
    trees = len(result["valid l2-mean"])
    predictions = np.empty(len(target))
    kind = TreeModel if regressor == "lightgbm" else BaggedTrees
    for booster, (train, test) in zip(result["cvbooster"].boosters, folds):
        if kind is TreeModel:
            predictions[test] = booster.predict(weights[test], num_iteration=trees)
        else:
            predictions[test] = BaggedTrees.fit(weights[train], target[train], settings, trees).predict(weights[test])
    return Candidate(regressor, kind.fit(weights, target, settings, trees), predictions, trees)

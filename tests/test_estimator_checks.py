"""The estimator is a scikit-learn estimator: clone, get/set_params, model selection, check_estimator,
balanced class weights as scikit-learn computes them, labels by name, torch's global random state left
alone, logistic regression saved without a pickle. From the correctness review (issue 13)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import synthetic_features, write_feature_cache
from mmfuse.heads import FeatureSet, Head, HeadConfig, train_head
from mmfuse.heads.train import class_weights

FAST = dict(epochs=30, hidden=32, lr=3e-3)


def text_cache(path: Path, n: int = 300, seed: int = 0, identity: str = "x", **changes) -> Path:
    text, image, y, names = synthetic_features("text", n=n, seed=seed)
    return write_feature_cache(path, text, image, y, names, identity=identity, provenance=changes)


def test_balanced_class_weights_are_scikit_learns_with_an_absent_class():
    y = np.array([0, 0, 0, 1])
    w = class_weights(y, 3, "balanced")
    assert w.tolist() == pytest.approx([4 / (2 * 3), 4 / (2 * 1), 0.0])


def test_head_clones_and_works_in_scikit_learn_model_selection(tmp_path):
    from sklearn.base import clone
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score

    head = Head(HeadConfig(fusion="concat", **FAST))
    twin = clone(head)
    assert twin.get_params() == head.get_params() and twin.config == head.config
    assert twin.set_params(lr=1e-2).lr == 1e-2 and head.lr == FAST["lr"]
    X = FeatureSet.from_cache(text_cache(tmp_path / "train.h5", n=600))
    scores = cross_val_score(head, X, X.y, cv=StratifiedKFold(3), scoring="f1_macro")
    assert scores.shape == (3,) and scores.mean() > 0.75
    search = GridSearchCV(Head(fusion="logreg"), {"C": [1e-3, 1.0]}, cv=3, scoring="f1_macro").fit(X, X.y)
    assert search.best_params_["C"] in (1e-3, 1.0)
    pair = (X.text, X.image)  # plain arrays, labels by name
    names = np.array(X.label_names)[X.y]
    assert set(Head(fusion="logreg").fit(pair, names).predict(pair)) <= set(X.label_names)


class ArrayHead(Head):
    """A Head on plain 2D arrays, its columns split into text and image halves: scikit-learn's checks
    generate such arrays."""

    @staticmethod
    def _as_features(X, y=None):
        from sklearn.utils.validation import check_array

        if not isinstance(X, FeatureSet):
            X = check_array(X, dtype=np.float32, ensure_all_finite=False)
            X = (X[:, :max(1, X.shape[1] // 2)], X[:, max(1, X.shape[1] // 2):])
        return Head._as_features(X, y)


def test_scikit_learn_estimator_checks():
    """Every check passes but one, excluded by design: a class_weight dict (HeadConfig.class_weight is a
    named mode, serialised to JSON with the run)."""
    from sklearn.utils.estimator_checks import check_estimator

    check_estimator(ArrayHead(fusion="concat", epochs=30, lr=1e-2, hidden=16), on_skip=None,
                    expected_failed_checks={"check_class_weight_classifiers": "class_weight is a named mode"})


def test_fit_leaves_torchs_global_random_state_alone(tmp_path):
    X = FeatureSet.from_cache(text_cache(tmp_path / "train.h5", n=60))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Head(fusion="concat", epochs=2).fit(X)
    np.testing.assert_array_equal(torch.rand(3), expected)


def test_logreg_runs_save_no_pickle(tmp_path):
    head, _ = train_head(text_cache(tmp_path / "train.h5"), HeadConfig(fusion="logreg"), out=tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.pkl")) and (tmp_path / "run" / "logreg.npz").is_file()
    X = FeatureSet.from_cache(tmp_path / "train.h5")
    np.testing.assert_allclose(Head.load(tmp_path / "run").predict_proba(X), head.predict_proba(X), rtol=1e-5)


def test_a_saved_head_predicts_its_own_labels_after_loading(tmp_path):
    X = FeatureSet.from_cache(text_cache(tmp_path / "train.h5"))
    names = np.array(["pos", "neu", "neg"])[X.y]
    head = Head(fusion="logreg").fit((X.text, X.image), names)
    head.save(tmp_path / "run")
    loaded = Head.load(tmp_path / "run")
    np.testing.assert_array_equal(loaded.predict((X.text, X.image)), head.predict((X.text, X.image)))
    with pytest.raises(ValueError, match="expecting 28 features"):
        loaded.predict((X.text[:, :4], X.image))

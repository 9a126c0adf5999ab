"""``BaggedHead``: the k fold models of a cross-validation, averaged. What a grid scored is exactly
what it ships: each member is the model whose out-of-fold predictions made the CV score."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import MmfuseError
from ..multilabel import decide
from ..safe import corrupt, read_json
from .estimator import Head
from .features import FeatureSet, features_for


class BaggedHead:
    """Mean of the members' probabilities; the run-folder interface of :class:`Head`."""

    def __init__(self, members: list[Head]):
        if not members:
            raise MmfuseError("a bagged head needs at least one member")
        self.members = members
        first = members[0]
        self.config, self.label_names_, self.classes_ = first.config, first.label_names_, first.classes_
        self.provenance_, self.dims_ = first.provenance_, first.dims_
        self.multilabel_ = first.multilabel_
        self.text_feature_, self.image_feature_ = first.text_feature_, first.image_feature_  # the vectors read
        # multi-label: the members' thresholds (each tuned on its own validation rows), averaged
        self.thresholds_ = np.mean([m.thresholds_ for m in members], axis=0) if self.multilabel_ else None

    def predict_proba(self, X, zero: str | None = None) -> np.ndarray:
        return np.mean([m.predict_proba(X, zero) for m in self.members], axis=0)

    def decide(self, proba: np.ndarray) -> np.ndarray:
        return decide(proba, self.thresholds_, self.config.min_labels)

    def predict(self, X, zero: str | None = None) -> np.ndarray:
        pred = self.decide(self.predict_proba(X, zero))
        return pred if self.multilabel_ else self.classes_[pred]

    def modality_weights(self) -> dict[str, float] | None:
        ws = [m.modality_weights() for m in self.members]
        if ws[0] is None:
            return None
        return {k: float(np.mean([w[k] for w in ws])) for k in ws[0]}

    def check_compatible(self, X: FeatureSet) -> FeatureSet:
        return self.members[0].check_compatible(X)

    def predict_cache(self, cache, zero: str | None = None) -> tuple[FeatureSet, np.ndarray]:
        X = self.check_compatible(features_for(cache, self.provenance_, self.text_feature_ or self.config.text_feature,
                                               self.image_feature_ or self.config.image_feature))
        return X, self.predict_proba(X, zero)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        for k, m in enumerate(self.members):
            m.save(folder / "folds" / str(k))
        self.config.to_json(folder / "config.json")
        (folder / "bagged.json").write_text(json.dumps({"members": len(self.members),
                                                        "label_names": list(self.label_names_)}, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "BaggedHead":
        folder, path = Path(folder), Path(folder) / "bagged.json"
        n = read_json(path, required=("members",))["members"]
        if type(n) is not int or n < 1:
            raise corrupt(path, f"members is {n!r:.40}, not a positive whole number")
        members = [Head.load(folder / "folds" / str(k)) for k in range(n)]
        shape = [(m.label_names_, m.dims_, m.multilabel_) for m in members]
        for k in range(1, n):  # a fold copied from another run would not average
            if shape[k] != shape[0]:
                raise corrupt(folder / "folds" / str(k), "its labels or dims differ from folds/0's (another run's?)")
        return cls(members)


def load_head(folder: str | Path) -> Head | BaggedHead:
    """A saved head run folder: a bagged one (bagged.json) or a single head."""
    return BaggedHead.load(folder) if (Path(folder) / "bagged.json").is_file() else Head.load(folder)

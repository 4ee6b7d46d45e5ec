"""Pipeline + GridSearchCV with lesion masks routed per fold (scikit-learn metadata routing).

    python examples/grid_search_with_masks.py
    python examples/grid_search_with_masks.py --image-size 16 --epochs 1 --subsample 60   # smoke run
"""

import argparse

import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
from sklearn.pipeline import Pipeline

from dp_sklearn import MaskAttentionClassifier
from dp_sklearn.datasets import load_cxr1k


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--subsample", type=int, default=None)
    args = parser.parse_args(argv)

    sklearn.set_config(enable_metadata_routing=True)  # lets `masks` travel with X and y per fold
    data = load_cxr1k(image_size=args.image_size)
    X, y, masks, groups = data.images, data.target, data.masks, data.groups
    if args.subsample:
        keep = np.random.RandomState(0).permutation(len(y))[: args.subsample]
        X, y, masks, groups = X[keep], y[keep], masks[keep], groups[keep]

    clf = MaskAttentionClassifier(backbone="resnet10_half", image_size=args.image_size, max_epochs=args.epochs,
                                  batch_size=64, lr=2e-3, verbose=0, random_state=0).set_fit_request(masks=True)
    pipe = Pipeline([("clf", clf)])
    search = GridSearchCV(pipe, {"clf__attention_weight": [0.0, 1.0]}, cv=StratifiedGroupKFold(3),
                          scoring="roc_auc_ovr")
    search.fit(X, y, masks=masks, groups=groups)
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        print(f"{params}: macro ROC-AUC {score:.3f}")
    print(f"best: {search.best_params_}")


if __name__ == "__main__":
    main()

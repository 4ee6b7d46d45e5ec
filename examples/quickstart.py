"""Quick start: fit Deep Pneumonia on the bundled cxr1k radiographs and score a held-out fold.

    python examples/quickstart.py                      # DeepPneumoniaClassifier() defaults: fit ~3.2 min on 2 CPU cores
    python examples/quickstart.py --image-size 32 --epochs 1 --pretrain-epochs 1   # smoke run
"""

import argparse
import time

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold

from dp_sklearn import DeepPneumoniaClassifier
from dp_sklearn.datasets import load_cxr1k
from dp_sklearn.metrics import lesion_focus


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Every option defaults to DeepPneumoniaClassifier's own default.
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs")
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--subsample", type=int, default=None, help="use only this many images (smoke runs)")
    args = parser.parse_args(argv)

    data = load_cxr1k(image_size=args.image_size)
    X, y, masks, groups = data.images, data.target, data.masks, data.groups
    if args.subsample:
        keep = np.random.RandomState(0).permutation(len(y))[: args.subsample]
        X, y, masks, groups = X[keep], y[keep], masks[keep], groups[keep]
    train, test = next(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(X, y, groups))

    clf = DeepPneumoniaClassifier(image_size=args.image_size, device=args.device, random_state=0)
    if args.backbone:
        clf.set_params(backbone=args.backbone)
    if args.pretrain_epochs is not None:
        clf.set_params(pretrainer__max_epochs=args.pretrain_epochs)
    if args.epochs is not None:
        clf.set_params(classifier__max_epochs=args.epochs)
    t0 = time.perf_counter()
    clf.fit(X[train], y[train], masks=masks[train])  # masks only from the training fold
    print(f"fit {len(train)} images in {time.perf_counter() - t0:.1f} s on {clf.classifier_.device_}")

    proba = clf.predict_proba(X[test])  # no masks at prediction
    print(f"held-out macro ROC-AUC {roc_auc_score(y[test], proba, multi_class='ovr'):.3f}, "
          f"balanced accuracy {balanced_accuracy_score(y[test], proba.argmax(1)):.3f}")
    with_mask = test[data.mask_available[test]] if not args.subsample else test[masks[test].any(axis=(1, 2))]
    if len(with_mask):
        focus, area = lesion_focus(clf.attention_maps(X[with_mask]), masks[with_mask])
        print(f"lesion focus {focus.mean():.1%} of attention inside the radiologist mask (mask area {area.mean():.1%})")


if __name__ == "__main__":
    main()

"""The default recipe learns: MaskAttentionClassifier() against logistic regression on pixels (slow).

One patient-grouped fold of the *choosing* split (``StratifiedGroupKFold(5, shuffle=True,
random_state=1)``, fold 0: 900 training / 225 held-out radiographs at 64 px), on which the defaults
were chosen (docs/method.md); the benchmark reports on the ``random_state=0`` folds. The classifier
runs with its defaults only (no pre-training: that is DeepPneumoniaClassifier's), ~1 minute on 2
CPU cores.
"""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dp_sklearn.data.dataset import resize_images
from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

pytestmark = pytest.mark.slow


def _scores(y, proba):
    return roc_auc_score(y, proba, multi_class="ovr"), balanced_accuracy_score(y, proba.argmax(1))


def test_defaults_beat_logistic_regression_on_auc(cxr64):
    X, y, masks, groups = cxr64.images, cxr64.target, cxr64.masks, cxr64.groups
    train, test = next(StratifiedGroupKFold(5, shuffle=True, random_state=1).split(X, y, groups))
    small = resize_images(X, (24, 24)).reshape(len(X), -1)  # the benchmark's row 1
    logreg = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000)).fit(small[train], y[train])
    lr_auc, lr_bacc = _scores(y[test], logreg.predict_proba(small[test]))

    clf = MaskAttentionClassifier(random_state=0, verbose=0, device="cpu")
    clf.fit(X[train], y[train], masks=np.where(cxr64.mask_available[train, None, None], masks[train], False))
    auc, bacc = _scores(y[test], clf.predict_proba(X[test]))
    print(f"MaskAttentionClassifier() AUC {auc:.4f} bal-acc {bacc:.4f}; logistic regression {lr_auc:.4f} {lr_bacc:.4f}")
    # Measured on 2 CPU cores (AMD EPYC with AVX512-BF16, so bfloat16 autocast; vgg_compact 24-192;
    # deterministic on one device at a fixed thread count: 1 and 2 threads give different models). 2026-11-30, 30 epochs, defaults (no encoder, so attention_grad_scale
    # "auto" = 0.2): AUC 0.9267 vs 0.8814, balanced accuracy 0.780 vs 0.740 (with scale 0: 0.9209 and 0.783).
    # Earlier, at 20 epochs: 0.8993 and 0.740, a tie on balanced accuracy. With tta=8 (the default since
    # the fifth round of docs/method.md): 0.9253 and 0.783; the 0.9267 / 0.780 above were with 4 views.
    assert auc >= lr_auc + 0.02, (auc, lr_auc)
    assert bacc >= lr_bacc, (bacc, lr_bacc)

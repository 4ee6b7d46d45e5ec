"""Data-parallel training (issue 16, item 1): 2 CPU processes under ``torchrun`` (gloo) fit the
same models as one process with the same global batch and seed.

One ``torchrun --standalone --nproc_per_node=2`` run fits a ``MaskAttentionClassifier`` (with
hard attention, the Dice alignment loss, the lesion contrastive regulation and the
class-balanced loss on) and a ``ContrastivePretrainer`` (NT-Xent), both with BatchNorm
backbones. Each rank writes its predictions/embeddings; rank 0 pickles its estimators. This
process fits the same estimators alone and compares.

Why equality is expected, and to what tolerance: the global batch of ``batch_size=12`` images
is split 6 + 6; every rank draws the same batch order; BatchNorm statistics are all-reduced
over both shares (the CPU synchronised BatchNorm); the module's outputs are all-gathered so
that the batch-coupled losses (NT-Xent's negatives, the lesion contrastive pairs, the
class-balanced weights) see the 12 images exactly as one process does; and the gradient that
DDP averages equals the one-process gradient. What differs is the order of float32 sums
(convolutions on 6 instead of 12 images, the all-reduce, a two-pass BatchNorm variance), so
the two fits agree to float32 rounding amplified by 4 AdamW steps: probabilities and
embeddings to ``atol=1e-5`` (measured on a 2-core EPYC: 6e-8 for the probabilities, 4e-7 for
embeddings of scale 0.35), the epoch losses to ``rtol=1e-5``. The test prints the gaps and the
``torchrun`` time (``pytest -s``). Negative controls run by hand with the same script: with
BatchNorm not synchronised the gaps are 6e-3 (probabilities) and 0.10 (embeddings); with the
outputs not gathered (each rank's loss on its own 6 images) 5e-3 and 0.05.
Augmentation and test-time augmentation are off (``augment=False``, ``tta=0``): with them the
processes draw their own random views, so only statistical equivalence would hold.
"""

import os
import pickle
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="torch.distributed with the gloo backend is not available in this torch build",
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent('''
    import os, pickle, sys
    import numpy as np
    sys.path.insert(0, sys.argv[2])
    from test_distributed_training import data, make_estimators

    out = sys.argv[1]
    X, y, masks = data()
    rank = int(os.environ["RANK"])
    clf, ssl = make_estimators()
    clf.fit(X, y, masks=masks)
    ssl.fit(X)
    np.save(os.path.join(out, f"proba{rank}.npy"), clf.predict_proba(X))
    np.save(os.path.join(out, f"embed{rank}.npy"), ssl.transform(X))
    if rank == 0:
        with open(os.path.join(out, "models.pkl"), "wb") as f:
            pickle.dump((clf, ssl), f)
''')


def data():
    rng = np.random.RandomState(0)
    X = (0.6 * rng.rand(24, 16, 16)).astype(np.float32)
    y = np.array(["normal", "pneumonia", "covid19"] * 8)
    X[y == "pneumonia", 4:10, 4:10] += 0.3
    masks = np.zeros((24, 16, 16), dtype=bool)
    masks[1::3, 4:10, 4:10] = True
    masks[1::6] = False  # half of the pneumonia images are not annotated
    return X, y, masks


def make_estimators():
    from dp_sklearn.estimators import ContrastivePretrainer, MaskAttentionClassifier
    from dp_sklearn.nn.backbones import resnet10t

    torch.manual_seed(0)  # the backbone instances' initial weights (deep-copied at fit)
    tiny = resnet10t(widths=(4, 8, 8, 8))
    common = dict(image_size=16, batch_size=12, max_epochs=2, augment=False, precision="float32",
                  device="cpu", random_state=0, verbose=0)
    clf = MaskAttentionClassifier(tiny, projection_dim=8, tta=0, **common)
    ssl = ContrastivePretrainer(tiny, projection_dim=8, hidden_dim=16, **common)
    return clf, ssl


def test_two_gloo_processes_fit_the_one_process_model(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    env.pop("DP_SKLEARN_DISTRIBUTED", None)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(tmp_path), os.path.dirname(os.path.abspath(__file__))],
        env=env, capture_output=True, text=True, timeout=900,
    )
    took = time.perf_counter() - start
    assert proc.returncode == 0, f"torchrun failed after {took:.0f} s:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    # Both ranks hold the same model.
    proba0, proba1 = np.load(tmp_path / "proba0.npy"), np.load(tmp_path / "proba1.npy")
    embed0, embed1 = np.load(tmp_path / "embed0.npy"), np.load(tmp_path / "embed1.npy")
    np.testing.assert_allclose(proba1, proba0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(embed1, embed0, rtol=0, atol=1e-6)

    # Rank 0's pickles are plain estimators that predict in this (non-distributed) process.
    with open(tmp_path / "models.pkl", "rb") as f:
        clf_dp, ssl_dp = pickle.load(f)
    assert not torch.distributed.is_initialized()
    for est in (clf_dp, ssl_dp):
        kinds = {type(m).__name__ for m in est.module_.modules()}
        assert "BatchNorm2d" in kinds and not any("Sync" in k or k == "DistributedDataParallel" for k in kinds), kinds
        assert "_distributed" not in vars(est)
    X, y, masks = data()
    np.testing.assert_allclose(clf_dp.predict_proba(X), proba0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ssl_dp.transform(X), embed0, rtol=0, atol=1e-6)
    assert set(clf_dp.predict(X)) <= set(y)
    # The history is the global batch's: 2 steps of 12 images per epoch.
    assert clf_dp.history[-1, "batches", -1, "train_batch_size"] == 12
    assert len(clf_dp.history[-1, "batches"]) == 2

    # One process, same global batch and seed.
    clf, ssl = make_estimators()
    clf.fit(X, y, masks=masks)
    ssl.fit(X)
    proba, embed = clf.predict_proba(X), ssl.transform(X)
    gap_p, gap_e = np.abs(proba0 - proba).max(), np.abs(embed0 - embed).max()
    print(f"torchrun 2 x gloo took {took:.1f} s; max |p_dp - p_1| = {gap_p:.2e}, "
          f"max |emb_dp - emb_1| = {gap_e:.2e} (embedding scale {np.abs(embed).max():.2f})")
    np.testing.assert_allclose(proba0, proba, rtol=0, atol=1e-5)
    np.testing.assert_allclose(embed0, embed, rtol=0, atol=1e-5)
    np.testing.assert_allclose(clf_dp.history[:, "train_loss"], clf.history[:, "train_loss"], rtol=1e-5)
    np.testing.assert_allclose(ssl_dp.history[:, "train_loss"], ssl.history[:, "train_loss"], rtol=1e-5)


def test_batchnorm_conversion_keeps_the_state_and_is_undone():
    """The synchronised layers share the originals' tensors (optimizer, checkpoints unchanged)."""
    from dp_sklearn.estimators._ddp import _SyncBatchNorm, _share, convert_batchnorm, restore_batchnorm
    from dp_sklearn.nn.backbones import resnet10t

    torch.manual_seed(0)
    net = resnet10t(widths=(4, 8, 8, 8))
    keys, params = list(net.state_dict()), list(net.parameters())
    originals = convert_batchnorm(net)
    assert originals and all(isinstance(net.get_submodule(name), _SyncBatchNorm) for name in originals)
    assert list(net.state_dict()) == keys and all(a is b for a, b in zip(net.parameters(), params))
    x = torch.rand(3, 1, 16, 16)
    out = net.train()(x)  # no process group: plain BatchNorm
    restore_batchnorm(net, originals)
    assert not any(isinstance(m, _SyncBatchNorm) for m in net.modules())
    assert all(a is b for a, b in zip(net.parameters(), params))
    torch.testing.assert_close(net(x), out)
    assert [_share(5, r, 2) for r in range(2)] == [(0, 3), (3, 5)]
    assert [_share(1, r, 2) for r in range(2)] == [(0, 1), (1, 1)]

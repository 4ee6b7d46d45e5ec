"""Scoring image files on a real Dask cluster (dp_sklearn.distributed, dask_ml.ParallelPostFit).

A 2-worker ``distributed.LocalCluster`` (separate processes, loopback) scores the bundled files
(cxr1k PNGs and chest DICOMs, compressed ones included) in partitions; the result equals the
single-process ``predict``/``predict_proba`` of the same fitted model. The estimator is a
MaskAttentionClassifier trained for one epoch at 32 px: the test is about plumbing, not learning.
"""

import os

import numpy as np
import pytest

from _optional import import_or_skip
from dp_sklearn.datasets import load_cxr1k

DICOM_DIR = os.path.join(os.path.dirname(load_cxr1k.__code__.co_filename), "data", "dicom")
CHEST_DICOMS = ["RG1_UNCR.dcm", "RG1_J2KR.dcm", "siim_cr_chest_jpeg_baseline.dcm",
                "cr_chest_monochrome1_jpeg_baseline.dcm"]


@pytest.fixture(scope="module")
def fitted_and_paths():
    import_or_skip("dask_ml.wrappers", "dask-ml (pip install dp-sklearn[distributed])")
    from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier

    data = load_cxr1k(return_paths=True)
    y = np.asarray(data.target)
    idx = np.concatenate([np.flatnonzero(y == c)[:6] for c in np.unique(y)])
    train = [data.images[i] for i in idx]
    clf = MaskAttentionClassifier(backbone="resnet10_half", image_size=32, max_epochs=1, batch_size=6,
                                  device="cpu", random_state=0, verbose=0, augment=False)
    clf.fit(train, y[idx])
    test = [data.images[i] for i in np.flatnonzero(y == 0)[6:11]] + [data.images[i] for i in np.flatnonzero(y == 2)[6:11]]
    test += [os.path.join(DICOM_DIR, f) for f in CHEST_DICOMS]
    return clf, test


@pytest.fixture(scope="module")
def client():
    distributed = import_or_skip("distributed", "dask.distributed (pip install dp-sklearn[distributed])")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, memory_limit="2GiB") as cluster:
        with distributed.Client(cluster) as c:
            yield c


def test_two_worker_cluster_scores_paths_like_one_process(fitted_and_paths, client):
    from dp_sklearn.distributed import parallel_post_fit, paths_to_dask, score_paths

    clf, paths = fitted_and_paths
    ref_proba = clf.predict_proba(paths)
    ref_pred = clf.predict(paths)
    assert len(client.scheduler_info()["workers"]) == 2
    lazy = parallel_post_fit(clf).predict_proba(paths_to_dask(paths, partition_size=4))
    assert lazy.numblocks[0] == 4  # 14 paths in partitions of 4: 4 tasks
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        proba = np.asarray(client.compute(lazy).result())
    # Both worker processes scored partitions.
    assert len({t["worker"] for t in stream.data}) == 2
    np.testing.assert_allclose(proba, ref_proba, rtol=0, atol=1e-6)
    # score_paths on the client: the model scattered once to each worker, one task per partition.
    with get_task_stream(client) as stream:
        pred = score_paths(clf, paths, method="predict", partition_size=4, client=client)
    np.testing.assert_array_equal(pred, ref_pred)
    assert len([t for t in stream.data if "score_partition" in t["key"]]) == 4
    proba2 = score_paths(clf, paths, partition_size=5, client=client)
    np.testing.assert_allclose(proba2, ref_proba, rtol=0, atol=1e-6)


def test_directory_input_and_clear_errors(fitted_and_paths, tmp_path):
    from dp_sklearn.distributed import paths_to_dask, score_paths

    clf, paths = fitted_and_paths
    for p in paths[-4:]:
        os.symlink(p, tmp_path / os.path.basename(p))
    arr = paths_to_dask(str(tmp_path), partition_size=3)
    assert arr.shape == (4, 1) and arr.numblocks == (2, 1)
    # Dask's local scheduler (no client) gives the same answer.
    got = score_paths(clf, str(tmp_path), partition_size=3)
    np.testing.assert_allclose(got, clf.predict_proba(sorted(str(tmp_path / os.path.basename(p)) for p in paths[-4:])),
                               rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        paths_to_dask([])
    with pytest.raises(ValueError, match="method"):
        score_paths(clf, paths, method="transform")

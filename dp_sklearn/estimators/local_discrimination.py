"""Unsupervised local discrimination (LD) pre-training, as a scikit-learn transformer.

:class:`LocalDiscriminationPretrainer` follows Chen et al., "Unsupervised Local Discrimination
for Medical Images" (2022). Where SimCLR (:class:`~dp_sklearn.estimators.pretrainer.
ContrastivePretrainer`) learns one vector per image, LD learns one embedding per *pixel* with an
encoder-decoder, plus a clustering branch that splits every image into ``K`` soft regions, and
trains them in two stages:

1. patch discrimination (8x8 patches of two aligned views of an image, each told apart from every
   other patch of the batch) and mixup consistency of the embeddings;
2. the same plus region discrimination (each image's region ``k`` close to the batch's centre
   ``k``, far from the other centres) and an entropy term that makes the regions hard.

``transform`` gives pooled features (a linear probe), ``transform_dense`` the pixel embeddings
and soft segmentation, ``segment`` hard region maps, and ``encoder_`` warm-starts
:class:`~dp_sklearn.estimators.mask_attention.MaskAttentionClassifier` like the SimCLR
pre-trainer's. :func:`cluster_dice` scores how well one of the regions matches lesion masks.
"""

from __future__ import annotations

import copy
import warnings
from numbers import Integral, Real

import numpy as np
import skorch
import torch
from skorch.callbacks import EarlyStopping
from sklearn.base import TransformerMixin
from torch import nn

from .._compat import Hidden, Interval, StrOptions
from ..data.augment import build_augment
from ..losses.local_discrimination import LocalDiscriminationLoss
from ..nn.backbones import BACKBONES, DEPRECATED_BACKBONES
from ..nn.local_discrimination import LocalDiscriminationNet, dihedral
from ..utils.outputs import write_rows
from ._torch import _as_size
from .base import PretrainerBase, fill_doc
from ..metrics import cluster_dice  # noqa: F401  (its old home; re-exported)
from .callbacks import default_callbacks

__all__ = ["LocalDiscriminationPretrainer", "cluster_dice"]

#: Per-view augmentation defaults: a small rotation and intensity jitter, no crop / shift / zoom,
#: so the two views keep (almost) the same geometry and their patches stay aligned.
VIEW_AUGMENT_DEFAULTS = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation=5.0, translate=0.0,
                             scale=(1.0, 1.0), hflip=0.0)


def _images_only(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class _Stage2EarlyStopping(EarlyStopping):
    """skorch ``EarlyStopping`` that only counts stage-2 epochs (the loss jumps when stage 2 adds terms)."""

    def __init__(self, stage1_epochs=0, **kwargs):
        super().__init__(**kwargs)
        self.stage1_epochs = stage1_epochs

    def on_epoch_end(self, net, **kwargs):
        epoch = len(net.history)
        if epoch <= self.stage1_epochs:
            return
        if epoch == self.stage1_epochs + 1:
            self.misses_, self.dynamic_threshold_ = 0, (np.inf if self.lower_is_better else -np.inf)
        super().on_epoch_end(net, **kwargs)


@fill_doc
class LocalDiscriminationPretrainer(PretrainerBase, TransformerMixin, skorch.NeuralNet):
    """Local discrimination pre-training (Chen et al. 2022): pixel embeddings and soft regions.

    ``fit(X)`` trains, without labels, an encoder-decoder whose embedding branch gives a unit
    ``embedding_dim`` vector per pixel and whose clustering branch gives ``n_clusters`` soft
    region maps (sigmoid maps normalised to sum to 1 at each pixel). Each step, on a batch:

    - one random geometric transform per image (shared by the two views), then per view a small
      rotation and intensity jitter (``view_augment``); the second view is also flipped /
      turned by a multiple of 90 degrees (``dihedral``), and that turn is undone, exactly, on
      its embedding and assignment maps so the two views' patches line up;
    - a mixed image ``w * x_a + (1 - w) * x_b`` of two first views (``w ~ U(0, 1)``);
    - the loss :class:`~dp_sklearn.losses.local_discrimination.LocalDiscriminationLoss`:
      ``L_pd + mixup_weight * L_mix`` for the first ``stage1_epochs`` epochs, then
      ``+ ld_weight * L_ld + entropy_weight * L_ent``.

    Parameters
    ----------
    backbone : str, nn.Module subclass or instance, default="vgg_ld"
        ``"vgg_ld"``: the reference VGG-style encoder with BatchNorm (16-32-64-128-128, stride 16,
        :class:`~dp_sklearn.nn.local_discrimination.VGGLDEncoder`) and a U-Net decoder. A name of
        :func:`~dp_sklearn.nn.backbones.build_backbone` (``"resnet10_half"``, ``"resnet18"``...): that
        ResNet, whose stem and stages feed the U-Net decoder, so ``encoder_`` warm-starts
        ``MaskAttentionClassifier(backbone=<same name>)``. A module (deep-copied at each fit) or
        class returning a feature map: one upsampling decoder over its map (or its
        ``forward_features`` list when it has one).
    image_size : int, (int, int) or None, default=224
        Training size (>= 16). Array images are resized to it once and must be at least that
        large; None keeps the images' size (arrays only).
    embedding_dim : int, default=32
        Size ``D`` of the pixel embeddings.
    n_clusters : int, default=16
        Number ``K`` of soft regions.
    patch_grid : int, default=8
        Patch discrimination pools the embeddings to ``patch_grid x patch_grid`` patches.
    patch_temperature : float > 0, default=0.1
        Softmax temperature of the patch-discrimination term (both stages; an NT-Xent loss over
        the ``patch_grid x patch_grid`` pooled patches of the two views): the cosine similarities
        between the batch's patches are divided by it.
    region_temperature : float > 0, default=0.2
        Softmax temperature of the region-discrimination term (stage 2): similarities between
        each image's ``n_clusters`` region embeddings and the batch's region centres are divided
        by it.
    ld_weight : float, default=10
        Weight of region discrimination (stage 2).
    entropy_weight : float, default=0.1
        Weight of the assignment entropy (stage 2).
    mixup_weight : float, default=1
        Weight of mixup consistency; 0 skips the mixed images altogether.
    stage1_epochs : int, default=20
        Epochs of stage 1 (embedding only); the clustering branch trains from epoch
        ``stage1_epochs + 1``. ``stage1_epochs >= max_epochs`` never reaches stage 2 (the
        clustering branch then stays at its initialisation).
    max_epochs : int, default=40
        Epochs in total (0: no training, a randomly initialised network of the same architecture).
    lr : float, default=1e-3
        AdamW learning rate.
    weight_decay : float, default=1e-4
    batch_size : int, default=32
        Images per step (at least 2, at most the number of images; the last incomplete batch of
        an epoch is dropped in training).
    augment : bool, dict or nn.Module, default=True
        The geometric transform shared by the two views: ``True`` is
        :class:`~dp_sklearn.data.augment.RadiographAugment` with ``output_size=image_size`` and
        ``intensity=False`` (crop-and-resize, rotation, translation, zoom); a dict overrides those
        arguments; a module is called as ``module(images)``; ``False`` is the identity.
    view_augment : bool, dict or nn.Module, default=True
        The per-view part, applied independently to each view: ``True`` is ``RadiographAugment``
        with a +-5 degree rotation, no crop / shift / zoom, and its intensity defaults
        (brightness, contrast, gamma, blur, noise); a dict overrides those arguments; a module
        is used as is; ``False`` is the identity.
    dihedral : bool, default=True
        Flip (p = 1/2) and rotate by ``k * 90`` degrees (k uniform, or k in {0, 2} for
        non-square images) the second view, and undo it on its maps, as the reference does.
        The network thereby learns embeddings that follow the anatomy, not the image frame.
    transform_output : {"encoder", "embedding"}, default="encoder"
        What :meth:`transform` returns: the encoder's globally pooled last map
        (``encoder_.out_channels`` values, what a warm-started classifier starts from) or the
        normalised mean pixel embedding (``embedding_dim`` values).
    patience : int or None, default=None
        Early stopping on ``train_loss``, counted in stage 2 only.
    checkpoint_dir : str, os.PathLike or None, default=None
        Save after every epoch and resume from there (see
        :func:`~dp_sklearn.estimators.callbacks.default_callbacks`); the stage follows the
        restored history.
    {device}
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        bfloat16 autocast on CUDA by default; embeddings, assignments and losses are float32.
    num_workers : int, default=0
        DataLoader workers; with 0 and array input, batches are sliced from one tensor.
    random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling, views and mixing (repeatable on one device).
    {verbose}
    module, criterion, optimizer, train_split, callbacks, torch_load_kwargs, **kwargs
        skorch parameters. ``module`` is called as ``module(backbone=..., embedding_dim=...,
        n_clusters=..., **module__kwargs)``; ``criterion`` as ``criterion(patch_grid=...,
        temperature=patch_temperature, region_temperature=..., ld_weight=..., entropy_weight=...,
        mixup_weight=..., **criterion__kwargs)``.
    temperature : float > 0 or "deprecated", default="deprecated"
        Deprecated name of ``patch_temperature`` (a ``FutureWarning`` at ``fit``; when given it
        overrides ``patch_temperature``). Renamed because ``temperature`` of the other estimators
        is the temperature of their only contrastive term, while this estimator has two.

    Attributes
    ----------
    module_ : LocalDiscriminationNet
    encoder_ : nn.Module
        ``module_.encoder`` (live, not a copy), with ``out_channels`` and ``stride``.
    embedding_dim_ : int
        Width of the ``transform`` output.
    input_size_ : (int, int)
    augment_, view_augment_ : nn.Module
    history_ : skorch.History
        Per epoch ``train_loss``, ``pd_loss``, ``mixup_loss``, and in stage 2 ``ld_loss`` and
        ``entropy_loss``; ``images_per_s``.

    Examples
    --------
    >>> import numpy as np
    >>> from dp_sklearn.estimators.mask_attention import MaskAttentionClassifier
    >>> X = np.random.RandomState(0).rand(8, 32, 32).astype(np.float32)
    >>> ld = LocalDiscriminationPretrainer(image_size=32, patch_grid=4, batch_size=4, max_epochs=2,
    ...                                    stage1_epochs=1, device="cpu", verbose=0, random_state=0)
    >>> ld.fit(X).transform(X).shape
    (8, 128)
    >>> emb, regions = ld.transform_dense(X[:2]); emb.shape, regions.shape
    ((2, 32, 32, 32), (2, 16, 32, 32))
    >>> clf = MaskAttentionClassifier(backbone=ld.encoder_, encoder=ld.encoder_, image_size=32, max_epochs=1,
    ...                               batch_size=4, augment=False, verbose=0, random_state=0)
    >>> clf.fit(X, [0, 1] * 4).predict(X[:2]).shape
    (2,)
    """

    _parameter_constraints = {
        **PretrainerBase._parameter_constraints,
        "backbone": [StrOptions(set(BACKBONES) | set(DEPRECATED_BACKBONES), deprecated=set(DEPRECATED_BACKBONES)),
                     callable],
        "image_size": [Interval(Integral, 16, None, closed="left"), tuple, list, None],
        "embedding_dim": [Interval(Integral, 1, None, closed="left")],
        "n_clusters": [Interval(Integral, 2, None, closed="left")],
        "patch_grid": [Interval(Integral, 1, None, closed="left")],
        "patch_temperature": [Interval(Real, 0, None, closed="neither")],
        "temperature": [Interval(Real, 0, None, closed="neither"), Hidden(StrOptions({"deprecated"}))],
        "region_temperature": [Interval(Real, 0, None, closed="neither")],
        "ld_weight": [Interval(Real, 0, None, closed="left")],
        "entropy_weight": [Interval(Real, 0, None, closed="left")],
        "mixup_weight": [Interval(Real, 0, None, closed="left")],
        "stage1_epochs": [Interval(Integral, 0, None, closed="left")],
        "view_augment": ["boolean", dict, nn.Module],
        "dihedral": ["boolean"],
        "transform_output": [StrOptions({"encoder", "embedding"})],
    }
    _loss_terms = ("pd_loss", "mixup_loss", "ld_loss", "entropy_loss")
    cuda_dependent_attributes_ = ["augment_", "view_augment_"]

    def __init__(
        self,
        backbone="vgg_ld",
        image_size=224,
        embedding_dim=32,
        n_clusters=16,
        patch_grid=8,
        patch_temperature=0.1,
        region_temperature=0.2,
        ld_weight=10.0,
        entropy_weight=0.1,
        mixup_weight=1.0,
        stage1_epochs=20,
        max_epochs=40,
        lr=1e-3,
        weight_decay=1e-4,
        batch_size=32,
        augment=True,
        view_augment=True,
        dihedral=True,
        transform_output="encoder",
        patience=None,
        checkpoint_dir=None,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=1,
        *,
        module=LocalDiscriminationNet,
        criterion=LocalDiscriminationLoss,
        optimizer=torch.optim.AdamW,
        train_split=None,
        callbacks=None,
        torch_load_kwargs=None,
        temperature="deprecated",
        **kwargs,
    ):
        super().__init__(
            module, criterion, backbone=backbone, image_size=image_size, max_epochs=max_epochs, lr=lr,
            weight_decay=weight_decay, batch_size=batch_size, augment=augment, patience=patience,
            checkpoint_dir=checkpoint_dir, device=device, precision=precision, num_workers=num_workers,
            random_state=random_state, verbose=verbose, optimizer=optimizer, train_split=train_split,
            callbacks=callbacks,
            torch_load_kwargs=torch_load_kwargs,
            **kwargs,
        )
        self.embedding_dim = embedding_dim
        self.n_clusters = n_clusters
        self.patch_grid = patch_grid
        self.patch_temperature = patch_temperature
        self.temperature = temperature
        self.region_temperature = region_temperature
        self.ld_weight = ld_weight
        self.entropy_weight = entropy_weight
        self.mixup_weight = mixup_weight
        self.stage1_epochs = stage1_epochs
        self.view_augment = view_augment
        self.dihedral = dihedral
        self.transform_output = transform_output

    # ------------------------------------------------------------------ validation
    def _validate_hyperparams(self):
        super()._validate_hyperparams()
        if self.temperature != "deprecated":
            warnings.warn("LocalDiscriminationPretrainer's `temperature` was renamed `patch_temperature` (it is the "
                          "patch-discrimination term's); `temperature` will be removed.", FutureWarning, stacklevel=3)
        if self.image_size is not None:
            size = _as_size(self.image_size)
            if len(size) != 2 or min(size) < 16:
                raise ValueError(f"image_size must be an int >= 16 or a (height, width) pair of ints >= 16, "
                                 f"got {self.image_size!r}.")
            if min(size) < self.patch_grid:
                raise ValueError(f"patch_grid={self.patch_grid} is larger than image_size={self.image_size!r}.")

    def _check_size(self, have, size, fitting):
        if fitting and min(size) < max(16, self.patch_grid):
            raise ValueError(f"X images are {have[0]}x{have[1]}; local discrimination needs at least "
                             f"{max(16, self.patch_grid)} pixels per side (16, and patch_grid={self.patch_grid}); "
                             "image_size=None keeps the images' size.")

    # ------------------------------------------------------------------ outputs
    def _run(self, dataset, output):
        vars(self)["_output"] = output
        try:
            yield from self.forward_iter(dataset, training=False)
        finally:
            vars(self).pop("_output", None)

    def transform(self, X, out=None):
        """Pooled features: the encoder's pooled last map, or the mean pixel embedding.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, 1, H, W) or (n, H, W, 1), or sequence of paths
            Resized to ``input_size_``.
        out : None, path ending in ``.npy``, or float32 array of shape (n, ``embedding_dim_``)
            Where the features go, batch by batch (see :func:`dp_sklearn.utils.write_rows`):
            a new array (None), a ``.npy`` file written as the batches come and returned as a
            ``numpy.memmap`` (memory stays flat however many paths ``X`` holds), or an array to fill.

        Returns
        -------
        ndarray of float32, shape (n, ``embedding_dim_``)
            ``out`` itself when it is an array, the opened file when it is a path.
        """
        dataset = self._dataset(X)

        def features():  # a generator: runs only once ``out`` is checked
            for batch in self._run(dataset, self.transform_output):
                yield batch.float().cpu().numpy()

        return write_rows(features(), (len(dataset), self.embedding_dim_), out)

    def transform_dense(self, X):
        """Pixel embeddings and soft region assignments at ``input_size_``.

        Parameters
        ----------
        X : array-like or sequence of paths
            Resized to ``input_size_``.

        Returns
        -------
        embeddings : ndarray of float32, shape (n, embedding_dim, H, W)
            Unit norm along axis 1.
        assignments : ndarray of float32, shape (n, n_clusters, H, W)
            Non-negative, summing to 1 along axis 1 (the soft segmentation).

        Notes
        -----
        Both arrays are built in memory, ``(embedding_dim + n_clusters) * H * W * 4`` bytes an image
        (9.6 MB at the defaults and 224 px); for many images, call it on slices of ``X``.
        """
        es, as_ = [], []
        for e, a in self._run(self._dataset(X), "dense"):
            es.append(e.float().cpu())
            as_.append(a.float().cpu())
        return torch.cat(es).numpy(), torch.cat(as_).numpy()

    def segment(self, X):
        """Hard region map: the most likely of the ``n_clusters`` regions per pixel.

        Returns
        -------
        ndarray of int64, shape (n, H, W) at ``input_size_``
        """
        maps = [a.argmax(1).cpu() for _, a in self._run(self._dataset(X), "dense")]
        return torch.cat(maps).numpy().astype(np.int64)

    # ------------------------------------------------------------------ skorch hooks
    def training_callbacks(self):
        callbacks = default_callbacks(patience=None, checkpoint_dir=self.checkpoint_dir, monitor="train_loss")
        if self.patience is not None:
            stop = _Stage2EarlyStopping(stage1_epochs=self.stage1_epochs, monitor="train_loss",
                                        patience=int(self.patience), threshold=1e-4, lower_is_better=True)
            callbacks.insert(1, ("early_stopping", stop))
        return callbacks

    def initialize_module(self):
        kwargs = self.get_params_for("module")
        backbone = copy.deepcopy(self.backbone) if isinstance(self.backbone, nn.Module) else self.backbone
        self.module_ = self.module(backbone=backbone, embedding_dim=self.embedding_dim, n_clusters=self.n_clusters,
                                   **kwargs)
        if self.transform_output == "embedding":
            self.embedding_dim_ = int(self.embedding_dim)
        else:
            self.embedding_dim_ = int(self.module_.encoder.out_channels)
        return self

    def initialize_criterion(self):
        patch_temperature = self.patch_temperature if self.temperature == "deprecated" else self.temperature
        kwargs = dict(patch_grid=self.patch_grid, temperature=patch_temperature,
                      region_temperature=self.region_temperature, ld_weight=self.ld_weight,
                      entropy_weight=self.entropy_weight, mixup_weight=self.mixup_weight)
        kwargs.update(self.get_params_for("criterion"))
        self.criterion_ = self.criterion(**kwargs)
        return self

    def _build_augmenters(self):
        size = getattr(self, "input_size_", None) or _as_size(self.image_size)
        shared = {"output_size": tuple(size), "intensity": False} if size is not None else {"intensity": False}
        return {"augment_": build_augment(self.augment, shared, name="augment"),
                "view_augment_": build_augment(self.view_augment, VIEW_AUGMENT_DEFAULTS, name="view_augment")}

    # ------------------------------------------------------------------ steps
    def _training_inputs(self, x: torch.Tensor) -> dict:
        """Two aligned views (shared geometry, own rotation/intensity, 2nd turned) and a mixed image."""
        n, device = len(x), x.device
        shared = _images_only(self.augment_(x))
        views = _images_only(self.view_augment_(torch.cat([shared, shared])))
        x1, x2 = views[:n], views[n:]
        out = {"x1": x1, "x2": x2}
        if self.dihedral:
            square = x2.shape[-1] == x2.shape[-2]
            k = torch.randint(0, 4, (n,)) if square else 2 * torch.randint(0, 2, (n,))
            flip = torch.rand(n) < 0.5
            out.update(x2=dihedral(x2, k, flip), rot_k=k.to(device), flip=flip.to(device))
        if self.mixup_weight > 0:
            index = torch.randperm(n).to(device)
            w = torch.rand(n).to(device=device, dtype=x1.dtype)
            wv = w.view(-1, 1, 1, 1)
            out.update(x_mix=wv * x1 + (1 - wv) * x1[index], mix_index=index, mix_weight=w)
        if device.type == "cuda":
            for key in ("x1", "x2", "x_mix"):
                if key in out:
                    out[key] = out[key].contiguous(memory_format=torch.channels_last)
        return out

    def prepare_batch(self, batch, training):
        x = batch["x"]
        if training:
            return self._training_inputs(x)
        return {"x": x, "output": vars(self).get("_output", self.transform_output)}

    def _stage(self) -> int:
        return 2 if len(self.history) > self.stage1_epochs else 1

    def get_loss(self, y_pred, y_true, X=None, training=False):
        self.criterion_.stage = self._stage()
        total, terms = self.criterion_(y_pred)
        self._record_terms(terms, training)
        return total

    def validation_step(self, batch, **fit_params):
        """The LD loss of views of held-out images, module in eval mode."""
        return self._validation_step_with(self._training_inputs, batch)

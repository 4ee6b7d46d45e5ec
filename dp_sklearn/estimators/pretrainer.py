"""Self-supervised contrastive pre-training of the encoder (Deep Pneumonia, step 1).

:class:`ContrastivePretrainer` is a scikit-learn transformer built on skorch's
``NeuralNet``: ``fit(X)`` trains a SimCLR model (Chen et al., ICML 2020) on the images
alone — two augmented views of every image, an encoder, a projection head and the NT-Xent
loss over the batch — and ``transform(X)`` returns the encoder's pooled embedding. The
trained encoder (``encoder_``) warm-starts the classifiers.

skorch provides the training loop, the history, the callbacks (progress with images/s,
early stopping on a loss plateau, checkpoint/resume, see
:mod:`dp_sklearn.estimators.callbacks`) and persistence; :class:`~dp_sklearn.estimators.base.PretrainerBase`
the label-free ``fit``/``transform``; this module only says what the model is, what it receives
(``prepare_batch``) and what the loss is (``get_loss``). The network lives in
:mod:`dp_sklearn.nn.simclr`, the view maker in :mod:`dp_sklearn.data.augment`.
"""

from __future__ import annotations

import copy
from numbers import Integral, Real

import skorch
import torch
from sklearn.base import TransformerMixin
from torch import nn

from .._compat import Interval, StrOptions
from ..data.augment import two_views
from ..losses.contrastive import NTXentLoss
from ..nn.backbones import BACKBONES, DEPRECATED_BACKBONES
from ..nn.simclr import SimCLRModule
from .base import PretrainerBase, fill_doc

# SimCLRModule and two_views lived here before; they are re-exported from their old path.
__all__ = ["ContrastivePretrainer", "SimCLRModule", "two_views"]


@fill_doc
class ContrastivePretrainer(PretrainerBase, TransformerMixin, skorch.NeuralNet):
    """SimCLR pre-training of an image encoder, as a scikit-learn transformer.

    ``fit`` trains, without labels, an encoder + projection head so that two random views
    of the same radiograph are close and views of different radiographs are far apart
    (NT-Xent loss over the batch, Chen et al., ICML 2020). ``transform`` returns the
    encoder's globally pooled feature map, so
    ``Pipeline([("ssl", ContrastivePretrainer()), ("lr", LogisticRegression())])`` is a
    linear probe, and ``encoder_`` warm-starts the classifiers.

    Parameters
    ----------
    backbone : str, nn.Module subclass or nn.Module instance, default="vgg_compact"
        Encoder, see :func:`dp_sklearn.nn.backbones.build_backbone`: ``"vgg_compact"`` (the
        default, fast on a CPU), ``"resnet10_half"``, ``"resnet10"``, ``"resnet18"``, ``"resnet34"``,
        ``"resnet50"``, or a user module returning a feature map ``(N, C, h, w)``. An
        instance is deep-copied at each ``fit``, so its weights are the starting point
        and the object you passed is not trained in place.
    image_size : int, (int, int) or None, default=64
        Size the images are trained and embedded at (and the output size of the
        augmentation's crop). Array images are resized to it once; they must be at
        least this large (upsampling small images is refused, see Raises). ``None``
        keeps the images' own size (array input only).
    projection_dim : int, default=128
        Output dimension of the projection head.
    hidden_dim : int, default=512
        Hidden width of the projection head.
    temperature : float > 0, default=0.2
        Softmax temperature of the NT-Xent (SimCLR) loss, the only training loss here: cosine
        similarities between the projections of two views of an image and all other views in
        the batch are divided by it. As in every estimator with one contrastive term,
        ``temperature`` is that term's; smaller values sharpen it.
    batch_size : int, default=64
        Images per batch (each gives two views, so ``2 * batch_size - 2`` negatives per
        view). At least 2 and at most the number of images; the last incomplete batch of
        an epoch is dropped in training (a small last batch has few negatives), so every
        step sees ``batch_size`` images.
    max_epochs : int, default=30
        Training epochs in total (a resumed run only trains the missing ones). 0 leaves
        the encoder at its random initialisation — a baseline of the same architecture. On
        cxr1k (900 images, 64 px) the linear-probe AUC of the embedding fell below that of random
        weights for the first epochs and passed it only from about 30 (docs/method.md).
    lr : float, default=2e-3
        Learning rate of the optimizer.
    weight_decay : float, default=1e-4
        Weight decay given to the optimizer (``optimizer__weight_decay`` overrides it).
    augment : bool, dict or nn.Module, default=True
        How views are made, on the device, in batches: ``True`` uses
        :class:`~dp_sklearn.data.augment.RadiographAugment` defaults (crop-and-resize,
        small rotation/translation, brightness/contrast/gamma, blur, no vertical flip)
        with ``output_size=image_size``; a dict gives its arguments; an ``nn.Module``
        mapping ``(N, 1, H, W)`` images to ``(N, 1, H, W)`` views is used instead.
        ``False`` makes both views identical: the loss is then trivially minimised and
        nothing useful is learnt — allowed for tests and ablations only.
    patience : int or None, default=None
        Stop when the training loss has not improved (relative threshold 1e-4) for this
        many epochs; None (default) never stops early.
    {checkpoint_dir}
    {device}
    {precision}
    {num_workers}
    random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling and augmentation; the same seed on the same
        device gives the same ``transform`` output.
    {verbose}
    module : nn.Module class, default=SimCLRModule
        Called as ``module(backbone=..., projection_dim=..., hidden_dim=..., **module__kwargs)``.
    criterion : nn.Module class, default=NTXentLoss
        Called as ``criterion(temperature=temperature, **criterion__kwargs)`` and as
        ``criterion_(z1, z2)``.
    optimizer : torch optimizer class, default=torch.optim.AdamW
    train_split : callable or None, default=None
        skorch's split; None trains on all images (there are no labels to validate on).
        With a split, ``valid_loss`` is the NT-Xent loss of augmented views of the
        held-out images, computed in eval mode.
    callbacks : list or None, default=None
        Extra skorch callbacks, added after :func:`~dp_sklearn.estimators.callbacks.default_callbacks`.
    **kwargs
        Any other skorch ``NeuralNet`` argument (``optimizer__*``, ``iterator_train__*``,
        ``callbacks__*``, ``warm_start``, ``torch_load_kwargs``...). ``torch_load_kwargs=None``
        is skorch's ``{"weights_only": True}``: ``load_params`` reads tensors only. Checkpoints
        (``checkpoint_dir``) always load with ``weights_only=True``. A pickle of the estimator
        runs code when loaded whatever this says: to exchange a model, use
        :func:`dp_sklearn.persistence.save_model`.

    Attributes
    ----------
    module_ : SimCLRModule
        Encoder, pooling and projection head, on ``device_``.
    encoder_ : nn.Module
        The trained backbone: ``module_.encoder`` itself (live, not a copy; on ``device_``).
        Deep-copy it before changing it.
    embedding_dim_ : int
        Width of the ``transform`` output.
    input_size_ : (int, int)
        Height and width the model takes (``image_size`` or the training images' size).
    augment_ : nn.Module
        The augmentation used to make views, on ``device_``.
    history_ : skorch.History
        Per-epoch ``train_loss``, ``images_per_s`` (training images per second),
        ``dur``; checkpoint events when ``checkpoint_dir`` is set.
    device_ : str
        The device used (``device="auto"`` resolved).

    Raises
    ------
    ValueError
        In ``fit``: ``batch_size`` below 2 or above the number of images, images smaller
        than ``image_size``, ``X`` not of shape (n, H, W) / (n, 1, H, W) / (n, H, W, 1),
        NaN or infinite pixels, an invalid hyper-parameter, ``device="cuda"`` without CUDA.
        In ``transform``: the same input checks.

    See Also
    --------
    dp_sklearn.losses.contrastive.NTXentLoss : the loss.
    dp_sklearn.data.augment.RadiographAugment : the views.

    Notes
    -----
    Array inputs follow :func:`dp_sklearn.utils.check_images` (integers are scaled to
    [0, 1]). ``masks`` is accepted by ``fit`` and ignored, so the pre-trainer can sit in
    a Pipeline in front of a mask-guided classifier; with metadata routing enabled,
    request it with ``set_fit_request(masks=...)`` as usual.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(8, 32, 32).astype(np.float32), np.array([0, 1] * 4)
    >>> ssl = ContrastivePretrainer(backbone="resnet10_half", image_size=32, projection_dim=16,
    ...                             hidden_dim=32, batch_size=4, max_epochs=1, verbose=0,
    ...                             device="cpu", random_state=0)
    >>> ssl.fit(X).transform(X).shape
    (8, 256)
    >>> make_pipeline(ssl, LogisticRegression()).fit(X, y).predict(X).shape
    (8,)
    """

    _parameter_constraints = {
        **PretrainerBase._parameter_constraints,
        "backbone": [StrOptions(set(BACKBONES) | set(DEPRECATED_BACKBONES), deprecated=set(DEPRECATED_BACKBONES)),
                     callable],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "hidden_dim": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
    }

    def __init__(
        self,
        backbone="vgg_compact",
        image_size=64,
        projection_dim=128,
        hidden_dim=512,
        temperature=0.2,
        batch_size=64,
        max_epochs=30,
        lr=2e-3,
        weight_decay=1e-4,
        augment=True,
        patience=None,
        checkpoint_dir=None,
        device="auto",
        precision="auto",
        num_workers=0,
        random_state=None,
        verbose=1,
        *,
        module=SimCLRModule,
        criterion=NTXentLoss,
        optimizer=torch.optim.AdamW,
        train_split=None,
        callbacks=None,
        torch_load_kwargs=None,
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
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.temperature = temperature

    # ------------------------------------------------------------------ skorch hooks
    def initialize_module(self):
        kwargs = self.get_params_for("module")
        backbone = copy.deepcopy(self.backbone) if isinstance(self.backbone, nn.Module) else self.backbone
        self.module_ = self.module(
            backbone=backbone, projection_dim=self.projection_dim, hidden_dim=self.hidden_dim, **kwargs
        )
        self.embedding_dim_ = int(getattr(self.module_, "embedding_dim", None) or self.module_.encoder.out_channels)
        return self

    def initialize_criterion(self):
        kwargs = {"temperature": self.temperature, **self.get_params_for("criterion")}
        self.criterion_ = self.criterion(**kwargs)
        return self

    def _image_size(self):
        # Views are made at the size the model trains at (``image_size`` or the images' own size).
        return getattr(self, "input_size_", None) or super()._image_size()

    def prepare_batch(self, batch, training):
        x = batch["x"]
        if training:
            x1, x2 = two_views(self.augment_, x)
            return {"x1": x1, "x2": x2}
        return {"x": x}

    def get_loss(self, y_pred, y_true, X=None, training=False):
        z1, z2 = y_pred
        return self.criterion_(z1.float(), z2.float())

    def validation_step(self, batch, **fit_params):
        """NT-Xent loss of two augmented views of held-out images, module in eval mode."""

        def views(x):
            x1, x2 = two_views(self.augment_, x)
            return {"x1": x1, "x2": x2}

        return self._validation_step_with(views, batch)

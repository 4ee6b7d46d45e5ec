"""Self-supervised contrastive pre-training of the encoder (Deep Pneumonia, step 1).

:class:`ContrastivePretrainer` is a scikit-learn transformer built on skorch's
``NeuralNet``: ``fit(X)`` trains a SimCLR model (Chen et al., ICML 2020) on the images
alone — two augmented views of every image, an encoder, a projection head and the NT-Xent
loss over the batch — and ``transform(X)`` returns the encoder's pooled embedding. The
trained encoder (``encoder_``) warm-starts the classifiers.

skorch provides the training loop, the history, the callbacks (progress with images/s,
early stopping on a loss plateau, checkpoint/resume, see
:mod:`dp_sklearn.estimators.callbacks`) and persistence; this module only says what the
model receives (``prepare_batch``) and what the loss is (``get_loss``).
"""

from __future__ import annotations

import copy
import os
from numbers import Integral, Real

import numpy as np
import skorch
import torch
from sklearn.base import TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions, validate_parameter_constraints
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ..data.augment import build_augment
from ..data.dataset import XRayDataset
from ..losses.contrastive import NTXentLoss
from ..nn.backbones import BACKBONES, build_backbone
from ..nn.heads import GlobalAvgPool, ProjectionHead
from ..utils.device import autocast, resolve_device
from ._torch import TorchEstimatorMixin, _as_size
from .callbacks import default_callbacks, remaining_epochs

__all__ = ["ContrastivePretrainer", "SimCLRModule", "make_augment", "two_views"]


class SimCLRModule(nn.Module):
    """Encoder, global average pooling and projection head of SimCLR.

    Parameters
    ----------
    backbone : str, nn.Module subclass or instance, default="resnet18"
        Passed to :func:`dp_sklearn.nn.backbones.build_backbone`; it must return a feature
        map ``(N, C, h, w)``.
    projection_dim : int, default=128
        Dimension of ``z``, the projection the NT-Xent loss sees.
    hidden_dim : int, default=512
        Hidden width of the :class:`~dp_sklearn.nn.heads.ProjectionHead`.
    in_channels : int, default=1
        Image channels.
    **backbone_kwargs
        Passed to ``build_backbone`` (names and classes only).

    Attributes
    ----------
    encoder : nn.Module
        The backbone (``out_channels``, ``stride`` attributes).
    pool : GlobalAvgPool
    head : ProjectionHead
    embedding_dim : int
        ``encoder.out_channels``: the size of the representation ``h``.

    Notes
    -----
    ``forward(x=...)`` returns the embedding ``h = pool(encoder(x))`` of shape
    ``(N, embedding_dim)``; ``forward(x1=..., x2=...)`` runs both views through the model
    as one batch of ``2N`` images (one pass, BatchNorm statistics over both views) and
    returns the projections ``(z1, z2)``, each ``(N, projection_dim)``.

    Examples
    --------
    >>> import torch
    >>> m = SimCLRModule("resnet10t", projection_dim=16, hidden_dim=32)
    >>> z1, z2 = m(x1=torch.rand(4, 1, 32, 32), x2=torch.rand(4, 1, 32, 32))
    >>> z1.shape, m(x=torch.rand(4, 1, 32, 32)).shape
    (torch.Size([4, 16]), torch.Size([4, 256]))
    """

    def __init__(self, backbone="resnet18", projection_dim: int = 128, hidden_dim: int = 512, in_channels: int = 1,
                 **backbone_kwargs):
        super().__init__()
        self.encoder = build_backbone(backbone, in_channels=in_channels, **backbone_kwargs)
        self.embedding_dim = int(self.encoder.out_channels)
        self.pool = GlobalAvgPool()
        self.head = ProjectionHead(self.embedding_dim, hidden_dim, projection_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled representation ``h``: ``(N, C, H, W) -> (N, embedding_dim)``."""
        return self.pool(self.encoder(x))

    def forward(self, x=None, x1=None, x2=None, **kwargs):
        if x1 is not None or x2 is not None:
            if x1 is None or x2 is None or x1.shape != x2.shape:
                raise ValueError("SimCLRModule needs two views x1 and x2 of the same shape.")
            z = self.head(self.embed(torch.cat([x1, x2])))
            return z[: len(x1)], z[len(x1):]
        if x is None:
            raise ValueError("SimCLRModule.forward needs x (embedding) or x1 and x2 (projections).")
        return self.embed(x)


def make_augment(augment, image_size) -> nn.Module:
    """Build the view-generating augmentation from the ``augment`` parameter.

    Parameters
    ----------
    augment : bool, dict or nn.Module
        ``True``: :class:`~dp_sklearn.data.augment.RadiographAugment` with its defaults and
        ``output_size=image_size``; a dict: its keyword arguments (``output_size``
        defaults to ``image_size``); an ``nn.Module``: a deep copy of it, called as
        ``module(images)``; ``False``: the identity.
    image_size : (int, int)
        Size of the images the model is trained on.

    Returns
    -------
    nn.Module
    """
    return build_augment(augment, {"output_size": tuple(image_size)})


def two_views(augment: nn.Module, x: torch.Tensor):
    """Two independently augmented views of a batch ``x`` ``(N, 1, H, W)``.

    The batch is augmented once as ``cat([x, x])`` (each row draws its own random
    parameters, so the two copies of an image get different views) — one batched call
    instead of two. Used by :class:`ContrastivePretrainer` and by the hand-written
    reference loop of ``benchmarks/pretrain_throughput.py``.
    """
    views = augment(torch.cat([x, x]))
    if isinstance(views, (tuple, list)):  # an augmentation that returns (images, masks)
        views = views[0]
    if x.is_cuda:
        views = views.contiguous(memory_format=torch.channels_last)
    return views[: len(x)], views[len(x):]


class ContrastivePretrainer(TorchEstimatorMixin, TransformerMixin, skorch.NeuralNet):
    """SimCLR pre-training of an image encoder, as a scikit-learn transformer.

    ``fit`` trains, without labels, an encoder + projection head so that two random views
    of the same radiograph are close and views of different radiographs are far apart
    (NT-Xent loss over the batch, Chen et al., ICML 2020). ``transform`` returns the
    encoder's globally pooled feature map, so
    ``Pipeline([("ssl", ContrastivePretrainer()), ("lr", LogisticRegression())])`` is a
    linear probe, and ``encoder_`` warm-starts the classifiers.

    Parameters
    ----------
    backbone : str, nn.Module subclass or nn.Module instance, default="resnet18"
        Encoder, see :func:`dp_sklearn.nn.backbones.build_backbone`: ``"resnet10t"``
        (tiny, for CPU and small images), ``"resnet10"``, ``"resnet18"``, ``"resnet34"``,
        ``"resnet50"``, or a user module returning a feature map ``(N, C, h, w)``. An
        instance is deep-copied at each ``fit``, so its weights are the starting point
        and the object you passed is not trained in place.
    image_size : int, (int, int) or None, default=224
        Size the images are trained and embedded at (and the output size of the
        augmentation's crop). Array images are resized to it once; they must be at
        least this large (upsampling small images is refused, see Raises). ``None``
        keeps the images' own size (array input only).
    projection_dim : int, default=128
        Output dimension of the projection head.
    hidden_dim : int, default=512
        Hidden width of the projection head.
    temperature : float, default=0.2
        NT-Xent temperature.
    batch_size : int, default=64
        Images per batch (each gives two views, so ``2 * batch_size - 2`` negatives per
        view). At least 2 and at most the number of images; the last incomplete batch of
        an epoch is dropped in training (a small last batch has few negatives), so every
        step sees ``batch_size`` images.
    max_epochs : int, default=50
        Training epochs in total (a resumed run only trains the missing ones). 0 leaves
        the encoder at its random initialisation — a baseline of the same architecture.
    lr : float, default=1e-3
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
    patience : int or None, default=10
        Stop when the training loss has not improved (relative threshold 1e-4) for this
        many epochs; None never stops early.
    checkpoint_dir : str, os.PathLike or None, default=None
        When set, the module, optimizer, criterion and history are saved there after every
        epoch and a later ``fit`` with the same directory resumes from them, training
        until the history holds ``max_epochs`` epochs. Remove the directory to start over.
    device : {"auto", "cpu", "cuda"} or "cuda:N", default="auto"
        ``"auto"`` uses CUDA when present. On CUDA the model runs in ``channels_last``
        under bfloat16 autocast (see ``precision``); the loss is computed in float32.
    precision : {"auto", "float32", "bfloat16", "float16"}, default="auto"
        Autocast dtype; ``"auto"`` is bfloat16 on CUDA and float32 on CPU.
    num_workers : int, default=0
        DataLoader worker processes. With 0 and array input, batches are sliced straight
        from one tensor (no per-image collate); path input always streams through a
        DataLoader.
    random_state : int, RandomState or None, default=None
        Seeds initialisation, shuffling and augmentation; the same seed on the same
        device gives the same ``transform`` output.
    verbose : int, default=1
        1 prints one line per epoch (loss, images/s, duration); 0 is silent.
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
        ``callbacks__*``, ``warm_start``, ``torch_load_kwargs``...). ``torch_load_kwargs``
        defaults to ``{"weights_only": False}`` so that pickles holding the custom module
        load with ``torch.load`` (only unpickle files you trust).

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
    >>> ssl = ContrastivePretrainer(backbone="resnet10t", image_size=32, projection_dim=16,
    ...                             hidden_dim=32, batch_size=4, max_epochs=1, verbose=0,
    ...                             device="cpu", random_state=0)
    >>> ssl.fit(X).transform(X).shape
    (8, 256)
    >>> make_pipeline(ssl, LogisticRegression()).fit(X, y).predict(X).shape
    (8,)
    """

    _parameter_constraints = {
        "backbone": [StrOptions(set(BACKBONES)), callable],
        "image_size": [Interval(Integral, 8, None, closed="left"), tuple, list, None],
        "projection_dim": [Interval(Integral, 1, None, closed="left")],
        "hidden_dim": [Interval(Integral, 1, None, closed="left")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "augment": ["boolean", dict, nn.Module],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "checkpoint_dir": [str, os.PathLike, None],
        "precision": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    # augment_ may hold device tensors: skorch pickles it like module_ and maps it to the
    # loading machine's device.
    cuda_dependent_attributes_ = ["augment_"]

    def __init__(
        self,
        backbone="resnet18",
        image_size=224,
        projection_dim=128,
        hidden_dim=512,
        temperature=0.2,
        batch_size=64,
        max_epochs=50,
        lr=1e-3,
        weight_decay=1e-4,
        augment=True,
        patience=10,
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
            module,
            criterion,
            optimizer=optimizer,
            lr=lr,
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_split=train_split,
            callbacks=callbacks,
            verbose=verbose,
            device=device,
            torch_load_kwargs={"weights_only": False} if torch_load_kwargs is None else torch_load_kwargs,
            **kwargs,
        )
        self.backbone = backbone
        self.image_size = image_size
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.temperature = temperature
        self.weight_decay = weight_decay
        self.augment = augment
        self.patience = patience
        self.checkpoint_dir = checkpoint_dir
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state

    def __setattr__(self, name, value):
        # Hyper-parameters may hold nn.Module objects (a backbone or augment instance);
        # skorch would treat those as trainable components to register. They are plain values.
        if name in type(self)._parameter_constraints:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ validation
    def _validate_hyperparameters(self):
        params = {name: getattr(self, name) for name in self._parameter_constraints}
        validate_parameter_constraints(self._parameter_constraints, params, caller_name=type(self).__name__)
        if self.image_size is not None:
            size = _as_size(self.image_size)
            if len(size) != 2 or min(size) < 8:
                raise ValueError(f"image_size must be an int >= 8 or a (height, width) pair of ints >= 8, got {self.image_size!r}.")
        if isinstance(self.backbone, type) and not issubclass(self.backbone, nn.Module):
            raise TypeError(f"backbone must be a name, an nn.Module subclass or instance, got the class {self.backbone.__name__}.")
        if not isinstance(self.backbone, (str, type, nn.Module)):
            raise TypeError(f"backbone must be a name in {sorted(BACKBONES)}, an nn.Module subclass or instance, "
                            f"got {type(self.backbone).__name__}.")
        resolve_device(self.device)  # clear error for device="cuda" without CUDA

    def _validate_data(self, X, masks=None, *, fitting: bool):
        images, _, _ = self._check_inputs(X, masks if fitting else None)
        n = len(images)
        if isinstance(images, list):
            if self.image_size is None:
                raise ValueError("image_size=None needs array input; with file paths give image_size so every image "
                                 "is read at the same size.")
            size = _as_size(self.image_size)
        else:
            have = tuple(images.shape[1:])
            size = have if self.image_size is None else _as_size(self.image_size)
            if fitting and (have[0] < size[0] or have[1] < size[1]):
                raise ValueError(
                    f"X images are {have[0]}x{have[1]} but image_size={self.image_size!r} asks for "
                    f"{size[0]}x{size[1]} crops: images smaller than the crop would be upsampled. "
                    f"Use image_size <= {min(have)} or larger images."
                )
        if fitting and self.batch_size > n:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the number of images ({n}); contrastive "
                "training needs full batches, so use batch_size <= n_samples."
            )
        return images, size

    # ------------------------------------------------------------------ fit / transform
    def fit(self, X, y=None, masks=None, **fit_params):
        """Train the encoder with SimCLR on the images ``X`` (labels are not used).

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, 1, H, W) or (n, H, W, 1), or sequence of paths
            Training radiographs.
        y : ignored
            Accepted for Pipeline compatibility.
        masks : ignored
            Accepted so that masks routed to a later step do not break the Pipeline.
        **fit_params
            Passed to skorch's ``fit``.

        Returns
        -------
        self : ContrastivePretrainer
        """
        self._validate_hyperparameters()
        images, size = self._validate_data(X, masks, fitting=True)
        dataset = XRayDataset(images, image_size=size)
        self.input_size_ = size
        super().fit(dataset, None, **fit_params)
        return self

    def partial_fit(self, X, y=None, classes=None, masks=None, **fit_params):
        """Train for ``max_epochs`` more epochs, initialising first if needed.

        Parameters
        ----------
        X : array-like or sequence of paths
            See :meth:`fit`.
        y, classes, masks : ignored

        Returns
        -------
        self : ContrastivePretrainer
        """
        if not isinstance(X, torch.utils.data.Dataset):  # skorch's fit calls us with the dataset
            self._validate_hyperparameters()
            images, size = self._validate_data(X, masks, fitting=True)
            if getattr(self, "initialized_", False) and tuple(size) != tuple(getattr(self, "input_size_", size)):
                raise ValueError(f"partial_fit images are used at {size}, the model was trained at {self.input_size_}.")
            X = XRayDataset(images, image_size=size)
            self.input_size_ = size
        return super().partial_fit(X, None, **fit_params)

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        if epochs is None:
            epochs = remaining_epochs(self)
        return super().fit_loop(X, y, epochs=epochs, **fit_params)

    def transform(self, X):
        """Embed images with the trained encoder (globally average-pooled feature map).

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, 1, H, W) or (n, H, W, 1), or sequence of paths
            Images of any size; they are resized to ``input_size_``.

        Returns
        -------
        ndarray of float32, shape (n, ``embedding_dim_``)
        """
        check_is_fitted(self, "module_")
        images, _ = self._validate_data(X, fitting=False)
        dataset = XRayDataset(images, image_size=self.input_size_)
        chunks = [out.float().cpu() for out in self.forward_iter(dataset, training=False)]
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)

    def get_feature_names_out(self, input_features=None):
        """Names of the embedding columns: ``embedding0``, ``embedding1``, ...

        Parameters
        ----------
        input_features : ignored

        Returns
        -------
        ndarray of str objects, shape (``embedding_dim_``,)
        """
        check_is_fitted(self, "module_")
        return np.asarray([f"embedding{i}" for i in range(self.embedding_dim_)], dtype=object)

    @property
    def encoder_(self):
        check_is_fitted(self, "module_")
        return self.module_.encoder

    # ------------------------------------------------------------------ skorch hooks
    def get_default_callbacks(self):
        return super().get_default_callbacks() + default_callbacks(
            patience=self.patience, checkpoint_dir=self.checkpoint_dir, monitor="train_loss"
        )

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

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix == "optimizer":
            kwargs.setdefault("weight_decay", self.weight_decay)
        return args, kwargs

    def initialize(self):
        super().initialize()
        size = getattr(self, "input_size_", None) or _as_size(self.image_size)
        # Set through vars(): skorch's __setattr__ would register an nn.Module attribute as a
        # trainable component with an "augment" prefix, clashing with the hyper-parameter.
        vars(self)["augment_"] = make_augment(self.augment, size).to(self.device_)
        return self

    def get_iterator(self, dataset, training=False):
        return self._unlabelled_iterator(dataset, training)

    def _set_training(self, training=True):
        # skorch calls this before every batch, and Module.train() walks the whole module
        # tree each time; switch only the components whose mode differs (a switch always
        # sets the whole tree, so the top-level flag tells the tree's mode).
        for name in self._modules + self._criteria:
            module = getattr(self, name + "_")
            if isinstance(module, nn.Module) and module.training != training:
                module.train(training)

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
        self._set_training(False)
        Xi, yi = skorch.dataset.unpack_data(batch)
        with torch.no_grad():
            batch_ = self._to_device(Xi)
            x1, x2 = two_views(self.augment_, batch_["x"])
            with autocast(self.device_, self.amp_dtype_):
                y_pred = self.module_(x1=x1, x2=x2)
            loss = self.get_loss(y_pred, yi, X=Xi, training=False)
        return {"loss": loss, "y_pred": y_pred}

    # skorch's NeuralNet brings predict/predict_proba, which mean nothing for a transformer;
    # hiding them keeps hasattr() honest for scikit-learn (Pipelines, checks).
    @property
    def predict(self):
        raise AttributeError("ContrastivePretrainer is a transformer: use transform(X) for embeddings.")

    @property
    def predict_proba(self):
        raise AttributeError("ContrastivePretrainer is a transformer: use transform(X) for embeddings.")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.required = False
        tags.non_deterministic = True
        return tags

"""One base per estimator kind: what every torch estimator, classifier and pre-trainer shares.

- :class:`TorchEstimatorBase`: the parameters every torch estimator has (declared and
  documented once, see :data:`~dp_sklearn.estimators._docs.SHARED_PARAMETERS` and
  :func:`~dp_sklearn.estimators._docs.fill_doc`), their validation,
  device and precision (from :class:`~dp_sklearn.estimators._torch.TorchEstimatorMixin`),
  the callbacks (skorch's public ``get_default_callbacks``: per-term loss logging, throughput,
  early stopping, checkpoint/resume, the learning-rate schedule), resuming a checkpointed run,
  warm-starting a backbone from an encoder, and the optimizer's parameter groups. Training-recipe
  parameters and the optimizer/scheduler callbacks belong here.
- :class:`TorchClassifierBase`: the fit prologue as one template method (validate parameters,
  check inputs, check targets, check ``sample_weight``, clear fitted attributes, fit), ``classes_``,
  ``predict`` and ``score`` (with the unseen-label check).
- :class:`PretrainerBase`: label-free ``fit``/``partial_fit``/``transform``, ``encoder_`` and
  ``get_feature_names_out``; no ``predict``/``predict_proba``.

A concrete estimator mixes one of the two last bases in front of a skorch net class and keeps only
what is its own: its network, loss, parameters and outputs.
"""

from __future__ import annotations

import copy
import inspect
import os
from numbers import Integral, Real

import numpy as np
import skorch
import torch
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score
from sklearn.utils import TransformerTags
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import LRScheduler, PassthroughScoring, PrintLog
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR

from .._compat import FastTrainingSwitchMixin, Interval, StrOptions, validate_parameter_constraints
from ..data.dataset import XRayDataset
from ..nn.backbones import build_backbone
from ..nn.optim import param_groups_without_bias_decay
from ..utils.device import autocast, resolve_device
from ..utils.outputs import write_rows
from ..utils.validation import check_images
from ._docs import SHARED_PARAMETERS, fill_doc  # noqa: F401  (re-exported)
from ._torch import TorchEstimatorMixin, _as_size
from .callbacks import WarmupCosineLR, default_callbacks, remaining_epochs

# Interval and StrOptions (scikit-learn's parameter constraints, borrowed through dp_sklearn._compat)
# are re-exported for the ``_parameter_constraints`` of estimators written on these bases.
__all__ = ["Interval", "PretrainerBase", "SHARED_PARAMETERS", "StrOptions", "TorchClassifierBase",
           "TorchEstimatorBase", "fill_doc"]

class TorchEstimatorBase(TorchEstimatorMixin):
    """Base of every dp_sklearn torch estimator (see the module docstring).

    Subclasses set ``_parameter_constraints`` to ``{**TorchEstimatorBase._parameter_constraints,
    ...their own}``, list the history keys their ``get_loss`` records in ``_loss_terms``, and
    implement ``initialize_module``, ``initialize_criterion``, ``prepare_batch`` and ``get_loss``.
    """

    _parameter_constraints = {
        "image_size": [Interval(Integral, 8, None, closed="left"), tuple, list, None],
        "max_epochs": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "augment": ["boolean", dict, nn.Module],
        "patience": [Interval(Integral, 1, None, closed="left"), None],
        "checkpoint_dir": [str, os.PathLike, None],
        "precision": [StrOptions({"auto", "float32", "bfloat16", "float16"})],
        "num_workers": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }
    #: History keys that ``get_loss`` records per batch; logged per epoch by ``PassthroughScoring``.
    _loss_terms = ()
    #: Parameters that may hold ``nn.Module`` objects: plain values, never skorch components.
    _plain_parameters = frozenset({"backbone", "encoder", "augment", "view_augment", "alignment_loss"})
    #: Fitted augmentation modules; skorch maps them to the loading machine's device when unpickled
    #: (its documented ``cuda_dependent_attributes_``; the fitted module, criterion and optimizer are
    #: added by skorch itself).
    cuda_dependent_attributes_ = ["augment_"]

    def __init__(self, module, criterion, *, backbone, image_size, max_epochs, lr, weight_decay, batch_size,
                 augment, patience, checkpoint_dir, device, precision, num_workers, random_state, verbose,
                 optimizer, train_split, **kwargs):
        super().__init__(module, criterion=criterion, optimizer=optimizer, lr=lr, max_epochs=max_epochs,
                         batch_size=batch_size, train_split=train_split, verbose=verbose, device=device, **kwargs)
        self.backbone = backbone
        self.image_size = image_size
        self.weight_decay = weight_decay
        self.augment = augment
        self.patience = patience
        self.checkpoint_dir = checkpoint_dir
        self.precision = precision
        self.num_workers = num_workers
        self.random_state = random_state

    def __setattr__(self, name, value):
        # skorch registers any nn.Module attribute as a trainable component; hyper-parameters that
        # hold a module (a backbone or augmentation instance) are plain values.
        if name in type(self)._plain_parameters or name in type(self)._parameter_constraints:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ------------------------------------------------------------------ validation
    def _validate_hyperparams(self):
        """Check every parameter against ``_parameter_constraints``; errors name the parameter."""
        params = {key: getattr(self, key) for key in self._parameter_constraints}
        validate_parameter_constraints(self._parameter_constraints, params, caller_name=type(self).__name__)
        if self.image_size is not None and not np.isscalar(self.image_size):
            size = tuple(self.image_size)
            if len(size) != 2 or any(not isinstance(s, Integral) or s < 8 for s in size):
                raise ValueError(f"image_size must be an int >= 8, a (height, width) pair or None, got {self.image_size!r}.")
        backbone = self.backbone
        if isinstance(backbone, type) and not issubclass(backbone, nn.Module):
            raise TypeError(f"backbone must be a name, an nn.Module subclass or instance, got the class {backbone.__name__}.")
        if not isinstance(backbone, (str, type, nn.Module)) and not callable(backbone):
            raise TypeError(f"backbone must be a name, an nn.Module subclass or instance, got {type(backbone).__name__}.")
        resolve_device(self.device)  # a clear error for device="cuda" without CUDA, before any work

    # ------------------------------------------------------------------ callbacks
    def get_default_callbacks(self):
        """skorch's defaults, per-term loss logging, :meth:`training_callbacks`, then the progress log."""
        base = [(name, cb) for name, cb in super().get_default_callbacks() if name != "print_log"]
        terms = [(name, PassthroughScoring(name=name, on_train=True)) for name in self._loss_terms]
        return base + terms + self.training_callbacks() + [("print_log", PrintLog())]

    def training_callbacks(self):
        """Callbacks of the training recipe: throughput, early stopping, checkpoint/resume, LR schedule.

        New objects on every call (skorch calls it at each ``fit``). The learning-rate scheduler
        comes after ``resume``, so a resumed fit's schedule starts at the restored epoch.
        """
        callbacks = default_callbacks(patience=self.patience, checkpoint_dir=self.checkpoint_dir)
        schedule = getattr(self, "lr_schedule", "constant")
        if schedule == "warmup_cosine":
            callbacks.append(("lr_scheduler", WarmupCosineLR(warmup=self.warmup)))
        elif schedule == "cosine":
            callbacks.append(("lr_scheduler", LRScheduler(policy=CosineAnnealingLR, T_max=self.max_epochs)))
        return callbacks

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        # A resumed run trains only the epochs its checkpoint is missing.
        if epochs is None:
            epochs = remaining_epochs(self)
        return super().fit_loop(X, y, epochs=epochs, **fit_params)

    # ------------------------------------------------------------------ building
    def _build_backbone(self):
        """The backbone the parameters ask for, warm-started from ``encoder`` when there is one."""
        backbone = copy.deepcopy(self.backbone) if isinstance(self.backbone, nn.Module) else self.backbone
        backbone = build_backbone(backbone, in_channels=1, **(getattr(self, "backbone_kwargs", None) or {}))
        self._load_encoder(backbone)
        return backbone

    def _load_encoder(self, backbone):
        enc = getattr(self, "encoder", None)
        if enc is None:
            return
        source = enc
        if not isinstance(enc, nn.Module):
            try:
                source = enc.encoder_
            except (AttributeError, NotFittedError):
                source = None
            if source is None:
                if hasattr(enc, "fit"):
                    raise ValueError(
                        f"encoder is an unfitted {type(enc).__name__}: fit it first, or pass its fitted "
                        "`encoder_` module (sklearn's clone un-fits estimator parameters)."
                    )
                raise TypeError(
                    f"encoder must be a fitted ContrastivePretrainer, an nn.Module or None, got {type(enc).__name__}."
                )
        if not isinstance(source, nn.Module):
            raise TypeError(f"encoder.encoder_ must be an nn.Module, got {type(source).__name__}.")
        state = {k: v.detach().clone() for k, v in source.state_dict().items()}
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(
                f"the encoder's weights ({type(source).__name__}) do not fit the backbone {self.backbone!r}: "
                "warm-start needs the same architecture (use the same `backbone`, `backbone_kwargs` as the "
                f"pretrainer). torch said: {str(exc).splitlines()[0]}"
            ) from exc

    def _build_augmenters(self):
        """``{fitted attribute: augmentation module}``, built at ``initialize`` and moved to the device."""
        return {"augment_": self._build_augmenter()}

    def initialize(self):
        super().initialize()
        for name, module in self._build_augmenters().items():
            vars(self)[name] = module.to(self.device_)  # plain attributes, not skorch components
        return self

    def _no_decay_parameters(self):
        """Parameters the optimizer must not decay beyond norms and biases; none by default."""
        return []

    def get_params_for_optimizer(self, prefix, named_parameters):
        args, kwargs = super().get_params_for_optimizer(prefix, named_parameters)
        if prefix != "optimizer":
            return args, kwargs
        try:
            accepts_decay = "weight_decay" in inspect.signature(self.optimizer).parameters
        except (TypeError, ValueError):
            accepts_decay = False
        if accepts_decay:
            # Weight decay on kernels and weight matrices only: decaying a norm's scale or a bias only
            # fights the next layer (and a prior-initialised bias must keep its prior).
            kwargs.setdefault("weight_decay", self.weight_decay)
            args = (param_groups_without_bias_decay(self.module_, kwargs["weight_decay"], self._no_decay_parameters(),
                                                    groups=args[0], norms_and_biases=True),)
        return args, kwargs

    # ------------------------------------------------------------------ inference
    def _forward_batches(self, dataset, *keys):
        """Run the module over ``dataset`` in eval mode, yielding ``(outputs, {key: aux[key]})`` per batch,
        float32 on CPU."""
        for yp in self.forward_iter(dataset, training=False):
            out, aux = yp if isinstance(yp, tuple) else (yp, {})
            yield out.float().cpu(), {key: aux[key].float().cpu() for key in keys}

    def _write_aux(self, dataset, key, width, out):
        """``aux[key]`` of every batch, ``(len(dataset), width)``, written batch by batch into ``out``
        (see :func:`~dp_sklearn.utils.write_rows`; the generator runs the model only once ``out`` is checked)."""
        blocks = (aux[key].numpy() for _, aux in self._forward_batches(dataset, key))
        return write_rows(blocks, (len(dataset), width), out)

    def _forward_outputs(self, dataset, *keys):
        """:meth:`_forward_batches` concatenated: ``(outputs, {key: aux[key]})``."""
        outs, extras = zip(*self._forward_batches(dataset, *keys))
        return torch.cat(outs), {key: torch.cat([extra[key] for extra in extras]) for key in keys}

    def _validation_step_with(self, inputs_fn, batch):
        """A validation step whose module inputs come from ``inputs_fn(x)`` (eval mode, no grad)."""
        for component in (self.module_, self.criterion_):
            component.train(False)
        Xi, yi = skorch.dataset.unpack_data(batch)
        with torch.no_grad():
            inputs = inputs_fn(self._to_device(Xi)["x"])
            with autocast(self.device_, self.amp_dtype_):
                y_pred = self.module_(**inputs)
            loss = self.get_loss(y_pred, yi, X=Xi, training=False)
        return {"loss": loss, "y_pred": y_pred}

    def _record_terms(self, terms, training):
        if training:
            for name, value in terms.items():
                self.history.record_batch(name, float(value))


def _check_sample_weight(sample_weight, n):
    if sample_weight is None:
        return None
    sample_weight = np.asarray(sample_weight, dtype=np.float64)
    if sample_weight.ndim != 1 or len(sample_weight) != n:
        raise ValueError(f"sample_weight must have shape ({n},), got {sample_weight.shape}.")
    if not np.all(np.isfinite(sample_weight)) or np.any(sample_weight < 0):
        raise ValueError("sample_weight must be finite and non-negative.")
    return sample_weight


class TorchClassifierBase(TorchEstimatorBase):
    """Base of the supervised torch estimators: one ``fit`` template, ``classes_``, ``predict``, ``score``.

    ``fit`` validates the parameters, checks the images (and masks when ``_uses_masks``), checks
    the targets (:meth:`_check_targets`), checks ``sample_weight``, clears the fitted attributes
    (``_fitted_attributes``), builds the training dataset (:meth:`_prepare_fit`, which may set the
    attributes ``initialize_module``/``initialize_criterion`` read), fits, and always calls
    :meth:`_end_fit`. Nothing is fitted when it raises before training.
    """

    _uses_masks = True
    _fitted_attributes = ()

    def _check_targets(self, y, n_samples):
        """``(classes, encoded targets)``: class labels encoded to ``0..k-1`` by default."""
        return self._encode_y(y, n_samples)

    def _prepare_fit(self, images, y, masks, available, sample_weight, classes):
        """Set what initialising the module needs and return the training dataset."""
        return self._make_dataset(images, y, masks, available, sample_weight=sample_weight)

    def _end_fit(self):
        """Drop per-fit caches; called after training, also when it failed."""

    def fit(self, X, y, masks=None, sample_weight=None):
        """Fit on images ``X``, targets ``y`` and (for the mask-guided estimators) lesion ``masks``.

        Parameters
        ----------
        X : array-like (n, H, W) / (n, 1, H, W) / (n, H, W, 1), or sequence of paths
        y : array-like of shape (n,) (class labels) or (n, L) (multi-label indicator)
        masks : None, array-like (n, H, W), list with ``None`` entries, or list of mask paths
            Radiologist lesion masks, training only; all-zero means "not annotated". Ignored by
            estimators that do not use masks.
        sample_weight : array-like of shape (n,), optional
            Non-negative weights multiplying each sample's classification loss.

        Returns
        -------
        self
        """
        self._validate_hyperparams()
        images, masks, available = self._check_inputs(X, masks if self._uses_masks else None)
        n = len(images)
        classes, targets = self._check_targets(y, n)
        sample_weight = _check_sample_weight(sample_weight, n)
        for name in ("fitted_classes_", *self._fitted_attributes):
            vars(self).pop(name, None)
        dataset = self._prepare_fit(images, targets, masks, available, sample_weight, classes)
        try:
            super().fit(dataset, targets if targets.ndim == 1 else None)
        finally:
            self._end_fit()
        self.fitted_classes_ = classes
        return self

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        if not isinstance(X, torch.utils.data.Dataset):
            raise TypeError("partial_fit is only used internally with a prepared dataset; call fit(X, y, masks=...).")
        return super().partial_fit(X, y, classes=classes, **fit_params)

    @property
    def classes_(self):
        if "fitted_classes_" not in vars(self):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: it has no classes_.")
        return self.fitted_classes_

    def _predict_dataset(self, X):
        check_is_fitted(self, "fitted_classes_")
        images = check_images(X, min_samples=1)
        return images, self._make_dataset(images)

    def predict(self, X):
        """Predicted labels ``(n,)`` (the original labels of ``y``)."""
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def score(self, X, y, sample_weight=None):
        """Accuracy on ``(X, y)``; labels not seen during ``fit`` raise ``ValueError``."""
        check_is_fitted(self, "fitted_classes_")
        y = np.asarray(y)
        if y.ndim == 1:
            unseen = np.setdiff1d(np.unique(y), self.classes_)
            if len(unseen):
                raise ValueError(f"y contains labels not seen during fit: {unseen.tolist()}.")
        return accuracy_score(y, self.predict(X), sample_weight=sample_weight)

    def fit_transform(self, X, y, masks=None, sample_weight=None):
        """Fit, then return the features of ``X`` that :meth:`transform` gives."""
        return self.fit(X, y, masks=masks, sample_weight=sample_weight).transform(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.input_tags.two_d_array = False
        tags.non_deterministic = False
        # transform() gives image features, so scikit-learn's transformer checks apply too.
        tags.transformer_tags = TransformerTags(preserves_dtype=["float32"])
        return tags


class PretrainerBase(FastTrainingSwitchMixin, TorchEstimatorBase):
    """Base of the label-free pre-trainers: ``fit``/``partial_fit``/``transform``, ``encoder_``.

    Subclasses may add checks of the working size (``_check_size``) and set
    ``embedding_dim_`` (set in ``initialize_module``); ``transform`` returns the module's output
    for ``prepare_batch(..., training=False)``.
    """

    _parameter_constraints = {
        **TorchEstimatorBase._parameter_constraints,
        "lr": [Interval(Real, 0, None, closed="neither")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
    }

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
            self._check_size(have, size, fitting)
        if fitting and self.batch_size > n:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the number of images ({n}); contrastive "
                "training needs full batches, so use batch_size <= n_samples."
            )
        return images, size

    def _check_size(self, have, size, fitting):
        """Extra checks of the working size (array input)."""

    def fit(self, X, y=None, masks=None, **fit_params):
        """Train the encoder on the images ``X`` (labels and masks are not used).

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
        self
        """
        self._validate_hyperparams()
        images, size = self._validate_data(X, masks, fitting=True)
        self.input_size_ = size
        super().fit(XRayDataset(images, image_size=size), None, **fit_params)
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
        self
        """
        if not isinstance(X, torch.utils.data.Dataset):  # skorch's fit calls us with the dataset
            self._validate_hyperparams()
            images, size = self._validate_data(X, masks, fitting=True)
            if getattr(self, "initialized_", False) and tuple(size) != tuple(getattr(self, "input_size_", size)):
                raise ValueError(f"partial_fit images are used at {size}, the model was trained at {self.input_size_}.")
            X = XRayDataset(images, image_size=size)
            self.input_size_ = size
        return super().partial_fit(X, None, **fit_params)

    def _dataset(self, X):
        check_is_fitted(self, "module_")
        images, _ = self._validate_data(X, fitting=False)
        return XRayDataset(images, image_size=self.input_size_)

    def transform(self, X, out=None):
        """Embed images with the trained encoder.

        Parameters
        ----------
        X : array-like of shape (n, H, W), (n, 1, H, W) or (n, H, W, 1), or sequence of paths
            Images of any size; they are resized to ``input_size_``.
        out : None, path ending in ``.npy``, or float32 array of shape (n, ``embedding_dim_``)
            Where the embeddings go, batch by batch (see :func:`dp_sklearn.utils.write_rows`):
            a new array (None), a ``.npy`` file written as the batches come and returned as a
            ``numpy.memmap`` (memory stays flat however many paths ``X`` holds), or an array to fill.

        Returns
        -------
        ndarray of float32, shape (n, ``embedding_dim_``)
            ``out`` itself when it is an array, the opened file when it is a path.
        """
        dataset = self._dataset(X)

        def embeddings():  # a generator: runs only once ``out`` is checked
            for batch in self.forward_iter(dataset, training=False):
                yield batch.float().cpu().numpy()

        return write_rows(embeddings(), (len(dataset), self.embedding_dim_), out)

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
        """The trained backbone: ``module_.encoder`` itself (live, not a copy; on ``device_``)."""
        check_is_fitted(self, "module_")
        return self.module_.encoder

    def get_iterator(self, dataset, training=False):
        return self._unlabelled_iterator(dataset, training)

    # skorch's NeuralNet brings predict/predict_proba, which mean nothing for a transformer;
    # hiding them keeps hasattr() honest for scikit-learn (Pipelines, checks).
    @property
    def predict(self):
        raise AttributeError(f"{type(self).__name__} is a transformer: use transform(X) for embeddings.")

    @property
    def predict_proba(self):
        raise AttributeError(f"{type(self).__name__} is a transformer: use transform(X) for embeddings.")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.target_tags.required = False
        tags.non_deterministic = True
        return tags

"""The adapter to private APIs of scikit-learn and skorch (dp_sklearn/_compat.py) still holds.

Each test pins one borrowed private name, so that an upgrade that moves or changes it fails here,
by name, instead of somewhere deep inside an estimator. See the module docstring of
``dp_sklearn._compat`` for why each is borrowed.
"""

import os

import numpy as np
import pytest
import torch
from skorch import NeuralNet

from dp_sklearn import _compat


def test_sklearn_parameter_validation_objects():
    from numbers import Integral, Real

    constraints = {"a": [_compat.Interval(Real, 0, 1, closed="left")], "b": [_compat.StrOptions({"x"})],
                   "c": [_compat.HasMethods(["fit"])]}
    _compat.validate_parameter_constraints(constraints, {"a": 0.5, "b": "x", "c": NeuralNet},
                                           caller_name="t")
    hidden = {"d": [_compat.Interval(Real, 0, None, closed="neither"),
                    _compat.Hidden(_compat.StrOptions({"deprecated"}))]}
    _compat.validate_parameter_constraints(hidden, {"d": "deprecated"}, caller_name="t")
    with pytest.raises(ValueError, match="'d' parameter of t") as error:
        _compat.validate_parameter_constraints(hidden, {"d": "other"}, caller_name="t")
    assert "deprecated" not in str(error.value)  # hidden from the message
    with pytest.raises(ValueError, match="'a' parameter of t"):
        _compat.validate_parameter_constraints(constraints, {"a": 2.0, "b": "x", "c": NeuralNet}, caller_name="t")

    @_compat.validate_params({"x": [_compat.Interval(Integral, 1, None, closed="left")]},
                             prefer_skip_nested_validation=True)
    def f(x):
        return x

    assert f(3) == 3
    with pytest.raises(ValueError, match="'x' parameter"):
        f(0)


def test_sklearn_num_samples_and_safe_indexing():
    assert _compat.num_samples(np.zeros((5, 3))) == 5
    assert _compat.num_samples(["a.png", "b.png"]) == 2
    assert _compat.safe_indexing(["a", "b", "c"], [2, 0]) == ["c", "a"]
    np.testing.assert_array_equal(_compat.safe_indexing(np.arange(4), np.array([1, 3])), [1, 3])


def test_skorch_component_registry_and_set_training():
    net = NeuralNet(torch.nn.Linear(2, 1), criterion=torch.nn.MSELoss).initialize()
    assert set(_compat.skorch_components(net)) >= {"module_", "criterion_"}
    # the private hook the fast mode switch overrides is still there and still called that way
    assert callable(getattr(NeuralNet, "_set_training", None))  # what _compat.set_training calls

    class Fast(_compat.FastTrainingSwitchMixin, NeuralNet):
        pass

    fast = Fast(torch.nn.Linear(2, 1), criterion=torch.nn.MSELoss).initialize()
    fast._set_training(False)
    assert not fast.module_.training and not fast.criterion_.training
    fast._set_training(True)
    assert fast.module_.training


def test_skorch_documented_cuda_dependent_attributes():
    # documented in NeuralNet's Attributes; the estimators add their augmentation modules to it
    assert isinstance(NeuralNet.cuda_dependent_attributes_, list)
    assert "cuda_dependent_attributes_" in NeuralNet.__doc__


def test_torch_cpu_bfloat16_capability_checks():
    # precision="auto" on CPU reads these private torch.cpu checks (through _compat); if torch
    # renames them, this fails here rather than silently changing every CPU fit's precision.
    import torch

    from dp_sklearn._compat import cpu_has_native_bfloat16

    assert callable(torch.cpu._is_avx512_bf16_supported)
    assert callable(torch.cpu._is_amx_tile_supported)
    assert isinstance(cpu_has_native_bfloat16(), bool)
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if "avx512_bf16" in flags or "amx_tile" in flags:
        assert cpu_has_native_bfloat16()


@pytest.mark.parametrize("shuffle", [True, False])
def test_dataloader_order_matches_a_real_dataloader(shuffle):
    # same order, and the global generator left in the same state (the next draw agrees)
    n = 37
    torch.manual_seed(123)
    loader_order = torch.cat(list(torch.utils.data.DataLoader(torch.arange(n), batch_size=5, shuffle=shuffle)))
    after_loader = torch.rand(3)
    torch.manual_seed(123)
    order = _compat.dataloader_order(n, shuffle)
    np.testing.assert_array_equal(order.numpy(), loader_order.numpy())
    torch.testing.assert_close(torch.rand(3), after_loader)


def test_optuna_study_storage():
    optuna = pytest.importorskip("optuna")
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(storage=storage, study_name="s")
    assert _compat.study_storage(study) is storage


def test_skorch_reads_device_attribute_and_pickled_device():
    # TorchEstimatorMixin's device="auto" relies on skorch reading net.device when it moves the
    # module, and on its pickled state carrying "device", from which __setstate__ maps tensors.
    net = NeuralNet(torch.nn.Linear(2, 1), criterion=torch.nn.MSELoss, device="cpu")
    net.device = "meta"
    net.initialize()
    assert net.module_.weight.device.type == "meta"
    net = NeuralNet(torch.nn.Linear(2, 1), criterion=torch.nn.MSELoss, device="cpu").initialize()
    state = net.__getstate__()
    assert state["device"] == "cpu"
    restored = NeuralNet.__new__(NeuralNet)
    restored.__setstate__(state)
    assert restored.device == "cpu" and restored.module_.weight.device.type == "cpu"

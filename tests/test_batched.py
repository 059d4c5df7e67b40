"""The walker-batched programs (core/batched.py): values and per-walker gradients equal the vmap path's."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_entropy.core import batched
from lightning_entropy.core.evaluator import Evaluator, FullBatch
from lightning_entropy.core.variables import resolve
from lightning_entropy.core.walkers import ParameterLayout


def _pair(model: nn.Module, train, test, variables=("train_loss", "test_accuracy")):
    layout = ParameterLayout.of(model)
    cvs = [resolve(v, loss="cross_entropy") for v in variables]
    data = FullBatch(train, test)
    fast = Evaluator(model, layout, data, cvs)
    general = Evaluator(model, layout, data, cvs)
    general._program = None  # the vmap path
    return layout, fast, general


def _compare(model, train, test, walkers=3, scale=0.3, seed=0):
    layout, fast, general = _pair(model, train, test)
    assert fast.path == "batched" and general.path == "vmap"
    base = layout.flatten(model)
    g = torch.Generator().manual_seed(seed)
    theta = base + scale * base.abs().mean() * torch.randn(walkers, layout.numel, generator=g, dtype=base.dtype)
    slopes = torch.randn(walkers, 2, generator=g, dtype=torch.float64)

    def bias(cv):
        return cv.sum(1), slopes.to(cv.dtype)

    cv_fast, _, grad_fast = fast.value_and_grad(theta, bias)
    cv_gen, _, grad_gen = general.value_and_grad(theta, bias)
    torch.testing.assert_close(cv_fast, cv_gen, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad_fast, grad_gen, rtol=1e-9, atol=1e-12)
    assert grad_fast.abs().sum(1).min() > 0  # every walker gets a gradient
    torch.testing.assert_close(fast(theta).values, general(theta).values, rtol=1e-10, atol=1e-12)
    return fast


def test_mnist_cnn_matches_vmap_in_float64():
    from lightning_entropy.tasks.mnist import MNISTClassifier

    torch.manual_seed(0)
    model = MNISTClassifier(2).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(14, 1, 28, 28, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (14,), generator=g)
    fast = _compare(model, (x[:8], y[:8]), (x[8:], y[8:]))
    fast._program.chunk = 3  # chunks of samples: the same function
    general = Evaluator(model, fast.layout, fast.data, fast.variables)
    general._program = None
    theta = fast.layout.flatten(model).expand(2, -1) * 1.1
    torch.testing.assert_close(fast(theta).values, general(theta).values, rtol=1e-10, atol=1e-12)


def test_cifar_resnet_matches_vmap_in_float64():
    from lightning_entropy.tasks.cifar_catdog import CIFARCatDogClassifier, make_synthetic_catdog

    torch.manual_seed(0)
    model = CIFARCatDogClassifier(width=2, blocks=1).double().eval()
    x, y = make_synthetic_catdog(10, seed=0)
    x = x.double() / 255.0
    _compare(model, (x[:6], y[:6]), (x[6:], y[6:]), walkers=2)


def test_frozen_convolution_is_shared_by_all_walkers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 2, 3, stride=2), nn.Tanh(),
                        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 4)).double()
    net[2].weight.requires_grad_(False)
    g = torch.Generator().manual_seed(2)
    x = torch.rand(10, 1, 14, 14, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=g)
    _compare(net, (x[:6], y[:6]), (x[6:], y[6:]))


def test_graphs_outside_the_supported_set_keep_vmap():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            return self.fc(self.conv(x).amax(dim=(-2, -1)))  # amax: not in the list

    assert batched.compile_program(Odd(), {}) is None
    circular = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"), nn.Flatten(),
                             nn.Linear(2 * 36, 3))
    x = torch.rand(4, 1, 6, 6)
    layout, fast, _ = _pair(circular, (x, torch.zeros(4, dtype=torch.long)), (x, torch.zeros(4, dtype=torch.long)))
    assert fast.path == "vmap"
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 16, 3)).eval()
    assert batched.compile_program(bn, {}) is None


def test_a_subclass_that_changes_forward_is_not_taken_for_its_registered_parent():
    from lightning_entropy.tasks.cifar_catdog import ChannelLayerNorm

    class Changed(ChannelLayerNorm):
        def forward(self, x):
            return super().forward(x) * 2

    net = nn.Sequential(nn.Conv2d(1, 2, 3), Changed(2), nn.Flatten(), nn.Linear(2 * 16, 3))
    program = batched.compile_program(net, {})
    assert program is None or all(type(net.get_submodule(n.target)) is not Changed
                                  for n, _, _ in program.steps if n.op == "call_module")
    x = torch.rand(4, 1, 6, 6)
    y = torch.zeros(4, dtype=torch.long)
    layout, fast, general = _pair(net, (x, y), (x, y))
    theta = layout.flatten(net).expand(2, -1)
    torch.testing.assert_close(fast(theta).values, general(theta).values)


@pytest.mark.parametrize("walkers", [1, 5])
def test_chunked_float32_mnist_is_close_to_vmap(walkers):
    from lightning_entropy.tasks.mnist import MNISTClassifier

    torch.manual_seed(0)
    model = MNISTClassifier(2).eval()
    x = torch.rand(9, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    y = torch.arange(9) % 10
    layout, fast, general = _pair(model, (x[:5], y[:5]), (x[5:], y[5:]))
    fast._program.chunk = 2
    theta = layout.flatten(model).expand(walkers, -1) * torch.linspace(0.9, 1.1, walkers).unsqueeze(1)
    unit = lambda cv: (cv.sum(1), torch.ones_like(cv))  # noqa: E731
    a, b = fast.value_and_grad(theta, unit), general.value_and_grad(theta, unit)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[2], b[2], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["char_lm", "modular_arithmetic"])
def test_transformers_match_vmap_in_float64(task):
    from lightning_entropy.tasks.char_lm import CharDataModule, CharLanguageModel
    from lightning_entropy.tasks.modular_arithmetic import ModularArithmeticDataModule, ModularArithmeticTransformer

    torch.manual_seed(0)
    if task == "char_lm":
        dm = CharDataModule(context=8, n_train=12, n_test=10)
        model = CharLanguageModel(len(dm.vocab), 8, 8, 2, 2)
    else:
        dm = ModularArithmeticDataModule(modulus=5, train_fraction=0.6)
        model = ModularArithmeticTransformer(5, 8, 2, 2)
    model = model.double().eval()
    fast = _compare(model, dm.train_set.tensors, dm.test_set.tensors, walkers=5)
    fast._program.group = 2  # walkers in groups (the CPU default for large outputs): the same values
    general = Evaluator(model, fast.layout, fast.data, fast.variables)
    general._program = None
    theta = fast.layout.flatten(model).expand(5, -1) * torch.linspace(0.8, 1.2, 5, dtype=torch.float64).unsqueeze(1)
    unit = lambda cv: (cv.sum(1), torch.ones_like(cv))  # noqa: E731
    a, b = fast.value_and_grad(theta, unit), general.value_and_grad(theta, unit)
    torch.testing.assert_close(a[0], b[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a[2], b[2], rtol=1e-9, atol=1e-12)


def test_a_modified_transformer_keeps_vmap():
    from lightning_entropy.tasks.modular_arithmetic import ModularArithmeticDataModule, ModularArithmeticTransformer

    dm = ModularArithmeticDataModule(modulus=5, train_fraction=0.6)
    model = ModularArithmeticTransformer(5, 8, 1, 2).eval()
    model.net.blocks[0].mlp[1] = nn.Dropout(0.0)  # not the layers the batched forward re-implements
    _, fast, _ = _pair(model, dm.train_set.tensors, dm.test_set.tensors)
    assert fast.path == "vmap"

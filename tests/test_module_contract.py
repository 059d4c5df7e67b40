"""The module contract: LightningModules written the way Lightning's docs write them are sampled as they are.

Loaders passed to ``trainer.fit``, minibatch loaders, ``self.log`` / ``self.log_dict`` in both steps, the standard
losses computed inline (``F.cross_entropy``, ``F.mse_loss``, ``F.binary_cross_entropy_with_logits``), a dict-returning
step, BatchNorm and Dropout, frozen parameters; what cannot be sampled fails at setup with the fix.
"""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_entropy import EntropyMDStrategy, WangLandauStrategy
from lightning_entropy.core.evaluator import Evaluator, FullBatch
from lightning_entropy.core.variables import resolve
from lightning_entropy.core.walkers import ParameterLayout
from lightning_entropy.strategies import contract as contract_module

pytestmark = pytest.mark.usefixtures("one_thread")

N_TRAIN, N_VAL = 64, 32


def _xor(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    return TensorDataset(x, (x[:, 0] * x[:, 1] > 0).long())


def _loaders(batch_size: int = 16, target=lambda y: y):
    train, val = _xor(N_TRAIN, 0), _xor(N_VAL, 1)
    train = TensorDataset(train.tensors[0], target(train.tensors[1]))
    val = TensorDataset(val.tensors[0], target(val.tensors[1]))
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def _trainer(strategy, max_steps: int = 2, **kw) -> Trainer:
    kw.setdefault("logger", False)
    return Trainer(strategy=strategy, max_steps=max_steps, accelerator="cpu", enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, **kw)


def _wl(**kw) -> WangLandauStrategy:
    kw.setdefault("walkers", 4)
    kw.setdefault("steps_per_lightning_step", 5)
    return WangLandauStrategy(**kw)


# -- modules as Lightning's docs write them ---------------------------------------------------------------------------


class LitClassifier(LightningModule):
    """F.cross_entropy inline, self.log in both steps, a validation_step that only logs."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(dim=1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Regularised(LitClassifier):
    """A loss that is no standard loss of forward (an L2 term): the step path, through training_step itself."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y) + 0.01 * sum(p.pow(2).sum() for p in self.parameters())
        self.log_dict({"train_loss": loss}, on_step=True)
        return loss


class RegularisedReturning(Regularised):
    """A validation_step that logs and returns its loss."""

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss


class LitRegressor(LightningModule):
    """F.mse_loss inline on (N, 1) targets, self.log_dict in training_step."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer1, self.layer2 = nn.Linear(2, 8), nn.Linear(8, 1)

    def forward(self, x):
        return self.layer2(torch.tanh(self.layer1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log_dict({"train_mse": loss})
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("val_mse", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class LitBinary(LitClassifier):
    """One logit per sample, binary cross-entropy inline, a dict-returning training_step."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(logits, y.float())
        self.log("train_loss", loss)
        return {"loss": loss, "logits": logits.detach()}

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", ((self(x) > 0) == (y > 0.5)).float().mean())


class LitBatchNorm(LitClassifier):
    """BatchNorm and Dropout: no Linear chain, so vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 2))


# -- data from every place Lightning accepts it ------------------------------------------------------------------------


def test_loaders_passed_to_fit_logging_steps_and_inline_cross_entropy_sample_vectorized(monkeypatch):
    said = []
    monkeypatch.setattr(contract_module, "inform", said.append)  # the setup message
    model = LitClassifier()
    train, val = _loaders(batch_size=16)  # minibatches: the sampler joins them into the full sets
    trainer = _trainer(_wl(), max_steps=4)  # 4 minibatches: one epoch, so Lightning's own validation runs too
    trainer.fit(model, train, val)
    land = trainer.strategy.landscape
    assert land.names == ("ln_train_loss", "test_accuracy")
    assert land.metadata["vectorized"] and land.metadata["parameters"] == 42
    assert land.walker_steps == 4 * 5 * 4
    data = trainer.strategy._evaluator.data
    assert data.train[0].shape == (N_TRAIN, 2) and data.test[0].shape == (N_VAL, 2)
    assert trainer.strategy._evaluator.path == "linear chain"  # the batched Linear fast path
    assert "val_acc" in trainer.callback_metrics  # the user's own validation_step still logs in Lightning's loop
    assert len(said) == 1
    assert "sampling 42 of 42 parameters" in said[0] and "eval mode" in said[0] and "full batches" in said[0]
    assert "cross-entropy of forward(x), found in training_step" in said[0]


def test_the_step_loss_is_the_sampled_ln_train_loss():
    model = LitClassifier()
    train, val = _loaders()
    trainer = _trainer(_wl(), max_steps=1)
    trainer.fit(model, train, val)
    strategy = trainer.strategy
    theta = strategy.walker_parameters
    x, y = strategy._evaluator.data.train
    for w in range(theta.shape[0]):
        copy_ = copy.deepcopy(model)
        strategy._layout.load_into(copy_, theta[w])
        with torch.no_grad():
            expected = torch.log(F.cross_entropy(copy_(x), y))
        assert float(strategy._state.cv[w, 0]) == pytest.approx(float(expected), abs=1e-5)


def test_heldout_loaders_given_to_fit_are_found_without_lightnings_validation_loop():
    train, val = _loaders()
    trainer = _trainer(_wl(), limit_val_batches=0)  # Lightning loads no validation loaders
    trainer.fit(LitClassifier(), train, val)
    assert trainer.strategy.landscape.names == ("ln_train_loss", "test_accuracy")


class WithHooks(LitClassifier):
    def train_dataloader(self):
        return _loaders()[0]

    def val_dataloader(self):
        return _loaders()[1]


def test_module_dataloader_methods_are_read():
    trainer = _trainer(_wl(), num_sanity_val_steps=0)
    trainer.fit(WithHooks())
    assert trainer.strategy.landscape.names == ("ln_train_loss", "test_accuracy")
    assert trainer.strategy._evaluator.data.test[0].shape[0] == N_VAL


# -- losses found inline -----------------------------------------------------------------------------------------------


def test_inline_mse_gets_the_loss_axes_and_the_vectorized_path():
    train, val = _loaders(target=lambda y: y.float().unsqueeze(-1))
    trainer = _trainer(_wl())
    trainer.fit(LitRegressor(), train, val)
    land = trainer.strategy.landscape
    assert land.names == ("ln_train_loss", "ln_test_loss") and land.metadata["vectorized"]
    assert trainer.strategy._loss_kind == "mse"


def test_inline_binary_cross_entropy_in_a_dict_returning_step_gets_the_accuracy_axis():
    train, val = _loaders(target=lambda y: y.float())
    trainer = _trainer(_wl())
    trainer.fit(LitBinary(), train, val)
    land = trainer.strategy.landscape
    assert land.names == ("ln_train_loss", "test_accuracy") and land.metadata["vectorized"]
    assert trainer.strategy._loss_kind == "binary_cross_entropy"


def test_batchnorm_and_dropout_run_in_eval_mode_through_vmap(monkeypatch):
    said = []
    monkeypatch.setattr(contract_module, "inform", said.append)  # the setup message
    model = LitBatchNorm()
    train, val = _loaders()
    trainer = _trainer(_wl(), num_sanity_val_steps=0)
    trainer.fit(model, train, val)
    strategy = trainer.strategy
    assert strategy.landscape.names == ("ln_train_loss", "test_accuracy")
    assert strategy.landscape.metadata["vectorized"] and strategy._evaluator.path == "vmap"
    bn = model.net[1]
    assert torch.equal(bn.running_mean, torch.zeros(16)) and int(bn.num_batches_tracked) == 0  # never in train mode
    again = strategy._evaluator(strategy.walker_parameters).values
    assert torch.equal(again, strategy._evaluator(strategy.walker_parameters).values)  # no dropout noise
    assert "Dropout off" in said[0] and "BatchNorm with its running statistics" in said[0]


def test_a_loss_that_is_no_standard_loss_goes_through_training_step_with_its_logs_captured():
    train, val = _loaders()
    trainer = _trainer(_wl(variables=("train_loss",)))
    trainer.fit(Regularised(), train, val)  # self.log_dict(on_step=True) in training_step, under vmap
    land = trainer.strategy.landscape
    assert land.names == ("ln_train_loss",) and land.metadata["vectorized"]
    assert trainer.strategy._loss_kind is None
    assert land.observable_names == ("val_loss", "val_acc")  # what validation_step logs, recorded per bin unbiased
    _, mean, _ = land.observable_curve("val_acc")
    assert np.isfinite(mean).any() and ((mean[np.isfinite(mean)] >= 0) & (mean[np.isfinite(mean)] <= 1)).all()


def test_a_validation_step_that_logs_and_returns_its_loss_samples_ln_test_loss_under_vmap():
    train, val = _loaders()
    trainer = _trainer(_wl())
    trainer.fit(RegularisedReturning(), train, val)
    land = trainer.strategy.landscape
    assert land.names == ("ln_train_loss", "ln_test_loss") and land.metadata["vectorized"]


@pytest.mark.parametrize("model_cls", [LitClassifier, Regularised])
def test_a_metric_logged_in_validation_step_is_a_test_variable(model_cls):
    model = model_cls()
    train, val = _loaders()
    trainer = _trainer(_wl(variables=("train_loss", "val_acc")))
    trainer.fit(model, train, val)
    strategy = trainer.strategy
    assert strategy.landscape.names == ("ln_train_loss", "val_acc") and strategy.landscape.metadata["vectorized"]
    theta = strategy.walker_parameters
    values = strategy._evaluator(theta).values[:, 1]
    xv, yv = (t for t in strategy._evaluator.data.batch("test"))
    for w in range(theta.shape[0]):
        copy_ = copy.deepcopy(model)
        strategy._layout.load_into(copy_, theta[w])
        with torch.no_grad():
            expected = (copy_(xv).argmax(1) == yv).float().mean()
        assert float(values[w]) == pytest.approx(float(expected))


def test_logged_values_are_the_same_through_vmap_and_the_walker_loop():
    model = Regularised().eval()
    x, y = _xor(N_TRAIN, 0).tensors
    data = FullBatch((x, y), (x[:20], y[:20]))
    layout = ParameterLayout.of(model)
    logged = {"val_acc": ("test", False), "val_loss": ("test", True)}
    cvs = [resolve("train_loss", loss=None), resolve("val_loss", loss=None, logged=logged),
           resolve("val_acc", loss=None, logged=logged)]
    theta = layout.flatten(model) + 0.3 * torch.randn(5, layout.numel, generator=torch.Generator().manual_seed(0))
    fast = Evaluator(model, layout, data, cvs, step_hooks=True)
    slow = Evaluator(model, layout, data, cvs, step_hooks=True, vectorize=False)
    assert fast.vectorized and not slow.vectorized
    torch.testing.assert_close(fast(theta).values, slow(theta).values)
    _, _, grad = fast.value_and_grad(theta, lambda cv: (cv[:, 0], torch.ones_like(cv)))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0  # val_loss is differentiable, val_acc is not


# -- frozen parameters ------------------------------------------------------------------------------------------------


def _frozen_model() -> LitClassifier:
    model = LitClassifier()
    with torch.no_grad():
        model.net[0].bias.fill_(0.7)
    model.net[0].bias.requires_grad_(False)
    model.net[2].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("vectorize", ["auto", False])
def test_frozen_parameters_stay_fixed_and_are_not_sampled(vectorize, monkeypatch):
    said = []
    monkeypatch.setattr(contract_module, "inform", said.append)  # the setup message
    model = _frozen_model()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train, val = _loaders()
    trainer = _trainer(_wl(vectorize=vectorize, start="uniform"), num_sanity_val_steps=0)
    trainer.fit(model, train, val)
    strategy = trainer.strategy
    assert strategy.landscape.metadata["parameters"] == 42 - 8 - 16
    assert strategy.walker_parameters.shape == (4, 18)
    assert "sampling 18 of 42 parameters" in said[0] and "24 frozen" in said[0]
    for name, value in dict(model.named_parameters()).items():
        if name in frozen:
            assert torch.equal(value, frozen[name]), name
    x, y = strategy._evaluator.data.train
    values = strategy._evaluator(strategy.walker_parameters).values[:, 0]
    for w in range(4):  # the landscape of this network: frozen values included, on every path
        copy_ = copy.deepcopy(model)
        strategy._layout.load_into(copy_, strategy.walker_parameters[w])
        with torch.no_grad():
            assert float(values[w]) == pytest.approx(float(torch.log(F.cross_entropy(copy_(x), y))), abs=1e-5)


def test_frozen_parameters_on_the_linear_fast_path_match_vmap():
    model = _frozen_model().eval()
    x, y = _xor(N_TRAIN, 0).tensors
    layout = ParameterLayout.of(model)
    data = FullBatch((x, y), (x[:20], y[:20]))
    cvs = [resolve("train_loss", loss="cross_entropy"), resolve("test_accuracy", loss="cross_entropy")]
    chain = Evaluator(model, layout, data, cvs)
    assert chain._chain is not None
    general = Evaluator(model, layout, data, cvs)
    general._chain = None
    theta = layout.flatten(model) + 0.2 * torch.randn(3, layout.numel, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(chain(theta).values, general(theta).values)


# -- what cannot be sampled fails at setup with the fix ------------------------------------------------------------


class LogsOnly(LitClassifier):
    def training_step(self, batch, batch_idx):
        x, y = batch
        self.log("train_loss", F.cross_entropy(self(x), y) + 0.0 * self.net[0].weight.sum() ** 2)


def test_a_training_step_without_a_loss_fails_at_setup_with_the_fix():
    train, val = _loaders()
    with pytest.raises(ValueError, match=r"training_step returns no loss.*logged \['train_loss'\].*Return the loss"):
        _trainer(_wl(), num_sanity_val_steps=0).fit(LogsOnly(), train, val)


def test_ln_test_loss_from_a_validation_step_that_only_logs_names_what_it_logs():
    train, val = _loaders()
    with pytest.raises(ValueError, match=r"returns no loss.*It logs \['val_acc', 'val_loss'\].*'val_acc'"):
        _trainer(_wl(variables=("train_loss", "test_loss")), num_sanity_val_steps=0).fit(Regularised(), train, val)


def test_an_unknown_variable_lists_the_logged_names():
    train, val = _loaders()
    with pytest.raises(ValueError, match=r"Unknown collective variable 'val_accuracy'.*'val_acc'"):
        _trainer(_wl(variables=("train_loss", "val_accuracy")), num_sanity_val_steps=0).fit(LitClassifier(), train, val)


class Disagreeing(LitClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.loss_fn = nn.CrossEntropyLoss()

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss_fn(self(x), y) + 1.0


def test_a_loss_fn_that_is_not_what_training_step_returns_is_reported():
    train, val = _loaders()
    with pytest.warns(UserWarning, match="samples the latter.*loss=None"):
        _trainer(_wl(), num_sanity_val_steps=0).fit(Disagreeing(), train, val)


# -- entropy_md takes the same modules ------------------------------------------------------------------------------


def test_entropy_md_takes_loaders_given_to_fit_and_an_inline_loss():
    train, val = _loaders()
    strategy = EntropyMDStrategy(walkers=4, steps_per_lightning_step=5, adapt_steps=0)
    _trainer(strategy, num_sanity_val_steps=0).fit(LitClassifier(), train, val)
    assert strategy.metric_name == "hard_test_accuracy" and strategy._evaluator.vectorized
    assert strategy.trace["hard_test_accuracy"].shape[1] == 4


def test_the_readme_example_samples_as_it_says():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Bring your own LightningModule", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    module_code, run = code.split("trainer = ", 1)
    namespace: dict = {}
    exec(module_code, namespace)  # noqa: S102 - our own README
    assert "trainer.fit(LitClassifier(), DataLoader(" in run  # loaders passed to fit, as below
    train, val = _loaders(batch_size=64)
    trainer = _trainer(_wl(), num_sanity_val_steps=0)
    trainer.fit(namespace["LitClassifier"](), train, val)
    assert trainer.strategy.landscape.names == ("ln_train_loss", "test_accuracy")
    assert trainer.strategy.landscape.metadata["vectorized"]

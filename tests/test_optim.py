"""SAM, the sharpness-aware optimizer the training-mode comparison measures entropy_md against."""

from __future__ import annotations

import copy

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_entropy.optim import SAM


def _quadratic(adaptive: bool):
    """One SAM-SGD step on 0.5 w^T A w against the step written out by hand."""
    torch.manual_seed(0)
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]])
    w = nn.Parameter(torch.tensor([0.7, -1.3]))
    rho, lr = 0.1, 0.05
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=adaptive, lr=lr)

    def closure():
        opt.zero_grad()
        loss = 0.5 * w @ a @ w
        loss.backward()
        return loss

    w0 = w.detach().clone()
    g = a @ w0
    scale = w0.abs() if adaptive else torch.ones(2)
    e = rho * scale**2 * g / torch.linalg.vector_norm(scale * g)
    expected = w0 - lr * (a @ (w0 + e))
    loss = opt.step(closure)
    return w.detach(), expected, float(loss), float(0.5 * w0 @ a @ w0)


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
def test_sam_steps_with_the_gradient_at_the_climbed_weights(adaptive):
    w, expected, loss, loss0 = _quadratic(adaptive)
    torch.testing.assert_close(w, expected)
    assert loss == pytest.approx(loss0)  # the loss returned is the one before the climb


def test_sam_checks_its_arguments_and_asks_for_a_closure():
    w = nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="rho=-0.1"):
        SAM([w], torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(TypeError, match="optimizer class"):
        SAM([w], "adam", lr=0.1)
    with pytest.raises(RuntimeError, match="needs a closure"):
        SAM([w], torch.optim.SGD, lr=0.1).step()


def test_sam_state_dict_round_trips():
    torch.manual_seed(0)
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    net = nn.Linear(3, 1)

    def run(model, opt, steps):
        def closure():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            return loss

        for _ in range(steps):
            opt.step(closure)

    opt = SAM(net.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2)
    run(net, opt, 3)
    twin = copy.deepcopy(net)
    twin_opt = SAM(twin.parameters(), torch.optim.Adam, rho=0.5, lr=1.0)  # its settings come from the state
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert twin_opt.param_groups[0]["rho"] == 0.05 and twin_opt.param_groups[0]["lr"] == 1e-2
    run(net, opt, 2)
    run(twin, twin_opt, 2)
    for p, q in zip(net.parameters(), twin.parameters()):
        assert torch.equal(p, q)


class _Classifier(LightningModule):
    """A module as Lightning's docs write one: loss inline, self.log, configure_optimizers returning SAM."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.calls = 0

    def training_step(self, batch, batch_idx):
        self.calls += 1
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return SAM(self.parameters(), torch.optim.Adam, rho=0.05, lr=1e-2)


def test_sam_trains_a_lightning_module_with_automatic_optimization():
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] * x[:, 1] > 0).long()
    module = _Classifier()
    before = float(nn.functional.cross_entropy(module.net(x), y))
    trainer = Trainer(max_epochs=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=64))
    assert trainer.global_step == 40 and module.calls == 80  # two gradients per step
    assert float(nn.functional.cross_entropy(module.net(x), y)) < 0.8 * before


def test_reproduction_report_carries_the_training_modes_table(tmp_path):
    """examples/reproduce.py puts benchmarks/training_modes.py's Markdown into the report, or says how to make it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "reproduce.py"
    spec = importlib.util.spec_from_file_location("reproduce", path)
    reproduce = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reproduce)
    missing = "\n".join(reproduce.training_section(tmp_path))
    assert "## Training with `entropy_md`" in missing and "Not measured yet" in missing
    (tmp_path / "training_modes.md").write_text("| task | method |\n|---|---|\n| spiral | sam+T |\n")
    present = "\n".join(reproduce.training_section(tmp_path))
    assert "| spiral | sam+T |" in present and "Not measured yet" not in present

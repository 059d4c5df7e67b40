"""Drive the sampling core directly (no Lightning): a 1-D Wang-Landau walk in ln L_train of a small regression
network, with the held-out loss recorded per bin without biasing the walk (the label-free Eq. (1) estimate).

    python examples/core_without_lightning.py
"""

import torch
from torch import nn

from lightning_entropy.core import Box, Evaluator, FlatnessOneOverT, FullBatch, Landscape, ParameterLayout, loop
from lightning_entropy.core.box import uniform
from lightning_entropy.core.samplers import wlmd
from lightning_entropy.core.variables import resolve

torch.manual_seed(0)
x = torch.randn(24, 2)
y = torch.sin(x[:, 0]) * torch.cos(x[:, 1])
net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))  # 13 parameters

layout = ParameterLayout.of(net)
evaluate = Evaluator(net, layout, FullBatch(train=(x[:12], y[:12]), test=(x[12:], y[12:])),
                     variables=[resolve("train_loss", loss="mse")], observables=[resolve("test_loss", loss="mse")])
bound = Box.constant(1.0).bounds(layout)
landscape = Landscape([(-3.5, 2.3)], [58], ["ln_train_loss"], kernel_sigma=0.5, observables=["ln_test_loss"])
schedule = FlatnessOneOverT(f0=0.1)

sampler = wlmd.WLMD(evaluate, landscape, bound, wlmd.MDConfig())  # deposits into `landscape` in place
state = sampler.init(uniform(64, bound, torch.Generator().manual_seed(1)), seed=0)
sched = schedule.init()
for _ in range(20):
    state, sched = loop.run(sampler, state, 250, schedule=schedule, schedule_state=sched, observe_every=5)

centers, mean_test, err = landscape.observable_curve("ln_test_loss")
for c, s, m in zip(centers, landscape.entropy, mean_test):
    if s == s:  # visited
        print(f"ln L_train {c:5.2f}   S - max S {s:6.2f}   <ln L_test> {m:5.2f}")

"""Run in the image build after slimming the venv: import and exercise what the daemons and
the operator commands use, so a removed file that they need fails the build, not a container.
"""

import importlib

import torch

from forsaken.common.datasets import load_dataset

for module in (
    "server.app",
    "client.app",
    "cli.certs",
    "cli.status",
    "cli.forget",
    "cli.admin",
    "health",
    "federation",
):
    importlib.import_module(f"forsaken.{module}")
model = torch.nn.Linear(4, 2)
loss = torch.nn.functional.cross_entropy(model(torch.ones(3, 4)), torch.tensor([0, 1, 0]))
loss.backward()
assert model.weight.grad is not None
for name in ("digits", "mnist5k"):
    load_dataset(name)
print(f"image smoke test passed: torch {torch.__version__} (CUDA {torch.version.cuda})")

"""The floor of one increment: read the file and train Lepton's network for the same epochs in plain PyTorch.

``python benchmarks/floor.py FILE LABEL EPOCHS [OPTIMISER]``: the same 80% of rows Lepton trains on
(it holds out 20%), standardised, an MLP of two hidden layers of 256, Adam at 1e-3, batches of
32, cross-entropy. Imports plus training.

OPTIMISER ``torch`` (the default) is what a user writes, ``torch.optim.Adam``, whose constructor
imports ``torch._dynamo`` (about a second here). ``lepton`` steps the same Adam the way Lepton's
training loop does (``lepton.models.optim``), without that import: the floor of a tool that
knows the trick, which Lepton's own runs are also compared with.
"""

import sys

import numpy as np
import pandas as pd
import torch
from torch import nn

frame = pd.read_parquet(sys.argv[1])
label, epochs = sys.argv[2], int(sys.argv[3])
frame = frame.iloc[: int(len(frame) * 0.8)]
x = frame.drop(columns=[label]).to_numpy(dtype=np.float32)
x = (x - x.mean(0)) / (x.std(0) + 1e-6)
classes, y = np.unique(frame[label].to_numpy(), return_inverse=True)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, len(classes)))
if len(sys.argv) > 4 and sys.argv[4] == "lepton":
    from lepton.models.optim import adam

    optimiser = adam(list(model.parameters()), 1e-3)
else:
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
for _ in range(epochs):
    for idx in torch.randperm(len(xt)).split(32):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        optimiser.step()
print(f"trained on {len(xt)} rows for {epochs} epochs")

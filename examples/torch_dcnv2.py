# requires: torch
"""Train a tiny DCNv2 classifier with defconv_np's PyTorch ops, on CPU.

    python examples/torch_dcnv2.py

A conv stem, a modulated deformable convolution block (offsets and mask
predicted by its own zero-initialised conv), global average pooling and a
linear head, trained with Adam on a fixed synthetic batch: a bright horizontal
or vertical bar in a noisy image. Prints the loss of each step and
checks that it drops.
"""

import torch
import torch.nn.functional as F

import defconv_np.torch as dct


class TinyDCNv2(torch.nn.Module):
    def __init__(self, classes=2):
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.dcn = dct.ModulatedDeformConv2d(8, 16, 3, padding=1)
        self.head = torch.nn.Linear(16, classes)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.dcn(h))
        return self.head(h.mean(dim=(2, 3)))


def synthetic_batch(n=16, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = 0.1 * torch.randn(n, 1, size, size, generator=generator)
    labels = torch.arange(n) % 2
    for i, label in enumerate(labels.tolist()):
        at = 2 + i % (size - 4)
        if label == 0:
            x[i, 0, at, 2:size - 2] += 1.0
        else:
            x[i, 0, 2:size - 2, at] += 1.0
    return x, labels


def main(steps=15):
    torch.manual_seed(0)
    model = TinyDCNv2()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    x, labels = synthetic_batch()
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        print(f"step {step}: loss {loss.item():.4f}")
    assert losses[-1] < 0.5 * losses[0], f"the loss did not drop: {losses}"
    # the offset/mask predictor started at zero and has learned something
    assert model.dcn.conv_offset.weight.abs().max() > 0
    return losses


if __name__ == "__main__":
    main()

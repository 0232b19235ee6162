"""One rank of the DistributedDataParallel test in tests/test_torch.py.

Run as ``python tests/torch_ddp_worker.py RANK WORLD_SIZE INIT_METHOD OUT``: joins a
gloo process group, trains the model of :func:`build_model` for
:data:`STEPS` SGD steps on its share of :func:`batch` under
DistributedDataParallel, and saves the gradients of every step (after DDP's
averaging) to OUT. The test compares them with one process on the whole batch.
"""

import datetime
import os
import sys

import torch
import torch.nn.functional as F

# the checkout as a fallback only: an installed defconv_np (tox) comes first
sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import defconv_np.torch as dct  # noqa: E402

STEPS = 2
LEARNING_RATE = 0.1


class TinyDCN(torch.nn.Module):
    """conv -> modulated deformable conv -> mean pooling -> linear, in float64."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(2, 4, 3, padding=1, dtype=torch.float64)
        self.dcn = dct.ModulatedDeformConv2d(4, 4, 3, padding=1, dtype=torch.float64)
        self.head = torch.nn.Linear(4, 3, dtype=torch.float64)

    def forward(self, x):
        h = self.dcn(torch.relu(self.stem(x)))
        return self.head(h.mean(dim=(2, 3)))


def build_model():
    torch.manual_seed(0)
    model = TinyDCN()
    # away from the zero start, so offsets and mask vary over the image
    torch.nn.init.normal_(model.dcn.conv_offset.weight, std=0.2)
    return model


def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, 6, 6, dtype=torch.float64, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)
    return x, y


def train(model, x, y):
    """STEPS SGD steps of the mean cross-entropy; the gradients of every step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
    grads = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
        optimizer.step()
    return grads


def main(rank, world_size, init_method, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=init_method, rank=rank,
                                         world_size=world_size,
                                         timeout=datetime.timedelta(seconds=60))
    try:
        model = build_model()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        x, y = batch()
        share = x.shape[0] // world_size
        part = slice(rank * share, (rank + 1) * share)
        grads = train(ddp, x[part], y[part])
        # DDP's parameter names are the model's, prefixed with "module."
        torch.save([{k.removeprefix("module."): v for k, v in g.items()} for g in grads], out)
        # both ranks done before either tears its pairs down: without it, a
        # rank's gloo threads were sometimes still reading from a closing peer
        # and the process aborted at exit (SIGABRT, "terminate called without
        # an active exception"), in about 1 run in 5
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])

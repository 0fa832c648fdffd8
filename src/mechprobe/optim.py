"""Optimizers of the training loop: AdamW, or Muon on the weight matrices of the blocks.

Muon (Jordan et al., 2024) keeps a momentum buffer B_t = mu B_{t-1} + G_t per weight matrix and
steps along its orthogonalised direction: with the nesterov look-ahead M = G_t + mu B_t and the SVD
M = U S V^T, the update is O ~ U V^T (every singular value of the step about 1), computed without an
SVD by five Newton-Schulz iterations of X <- a X + (b A + c A^2) X, A = X X^T, from X_0 = M / ||M||_F
(a, b, c = 3.4445, -4.7750, 2.0315: a quintic that drives the singular values towards ~1 fast). The
step is scaled by 0.2 sqrt(max(rows, cols)), which gives it the RMS of a typical AdamW step, so the
same lr and decoupled weight decay apply ("Muon is scalable for LLM training", Liu et al., 2025):

    W <- W (1 - lr wd) - lr 0.2 sqrt(max(rows, cols)) NS_5(M)

torch.optim.Muon runs the iterations in bf16, emulated and slow on CPUs without native bf16 (a
reasoner training step took 1.44 s with it against 0.185 s with AdamW); this one stays in the
parameters' dtype. Embeddings, the unembedding, norms and biases keep AdamW.
"""

import torch

from .utils import MechprobeError

OPTIMIZERS = ("adamw", "muon")
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalise(m, steps=5, eps=1e-7):
    """NS_steps(m): m (..., A, B) -> about U V^T of each matrix's SVD m = U S V^T (its singular values
    brought near 1); a stack of matrices is done in one batch."""
    a, b, c = NS_COEFFICIENTS
    x = m / m.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    wide = x.shape[-2] <= x.shape[-1]
    x = x if wide else x.mT  # iterate on the side where A = X X^T is the smaller square
    for _ in range(steps):
        g = x @ x.mT  # (..., min, min)
        x = a * x + (b * g + c * g @ g) @ x
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon over 2-D parameters (see the module's docstring): lr, decoupled weight_decay, momentum mu
    with the nesterov look-ahead, ns_steps Newton-Schulz iterations (the matrices of one shape and
    group orthogonalised together, one batched product per iteration)."""

    def __init__(self, params, lr=1e-3, weight_decay=0.0, momentum=0.95, ns_steps=5):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, ns_steps=ns_steps))
        if any(p.ndim != 2 for g in self.param_groups for p in g["params"]):
            raise MechprobeError("Muon takes weight matrices only (2-D parameters)")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for g in self.param_groups:
            by_shape = {}
            for p in g["params"]:
                if p.grad is not None:
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    buf.mul_(g["momentum"]).add_(p.grad)
                    by_shape.setdefault(p.shape, []).append((p, p.grad + g["momentum"] * buf))
            for shape, pm in by_shape.items():
                o = orthogonalise(torch.stack([m for _, m in pm]), g["ns_steps"])  # (n, A, B)
                for (p, _), u in zip(pm, o):
                    p.mul_(1 - g["lr"] * g["weight_decay"])
                    p.add_(u, alpha=-g["lr"] * 0.2 * max(shape) ** 0.5)
        return loss


def muon_split(model):
    """The trainable parameters as (matrices, rest): the 2-D weights of the model's blocks (attention
    and MLP projections), and everything else (embeddings, unembedding, norms, biases)."""
    io = {
        id(p)
        for m in (model.get_input_embeddings(), model.get_output_embeddings())
        if m is not None
        for p in m.parameters()
    }
    params = [p for p in model.parameters() if p.requires_grad]
    mats = [p for p in params if p.ndim == 2 and id(p) not in io]
    return mats, [p for p in params if p.ndim != 2 or id(p) in io]


def make_optimizers(model, lr, weight_decay, optimizer="adamw"):
    """[AdamW] over the trainable parameters; "muon": [AdamW over muon_split's rest, Muon over its
    matrices], both with the same lr and weight decay (one schedule drives both)."""
    if optimizer not in OPTIMIZERS:
        raise MechprobeError(f"OPTIMIZER={optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if optimizer == "adamw":
        return [torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)]
    mats, rest = muon_split(model)
    return [torch.optim.AdamW(rest, lr=lr, weight_decay=weight_decay), Muon(mats, lr=lr, weight_decay=weight_decay)]

"""OPTIMIZER=muon: the Newton-Schulz orthogonalisation against an SVD, one Muon step by hand, which
parameters each optimizer owns, and a resumed run that steps exactly as an uninterrupted one."""

import copy

import pytest
import torch

from mechprobe.optim import Muon, make_optimizers, orthogonalise
from mechprobe.training import Trainer
from mechprobe.utils import MechprobeError

from .conftest import tiny_llama


@pytest.mark.parametrize("shape", [(6, 6), (4, 9), (9, 4)])
def test_orthogonalise_keeps_the_singular_vectors_and_brings_the_values_near_one(shape):
    """For m = U S V^T, U^T NS(m) V is diagonal with entries in (0.5, 1.5) (the quintic's range, not
    exactly 1); a stack of matrices gives what each gives alone."""
    m = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    o = orthogonalise(m)
    for i in range(3):
        u, s, vh = torch.linalg.svd(m[i], full_matrices=False)
        d = u.T @ o[i] @ vh.T  # (k, k)
        off = d - torch.diag(torch.diagonal(d))
        assert off.abs().max() < 1e-6
        assert ((torch.diagonal(d) > 0.5) & (torch.diagonal(d) < 1.5)).all()
        torch.testing.assert_close(orthogonalise(m[i]), o[i])
    torch.testing.assert_close(orthogonalise(m.mT), o.mT)  # tall or wide: the same map


def test_muon_steps_by_hand():
    """Two steps: B_1 = G_1, B_2 = mu B_1 + G_2; W <- W (1 - lr wd) - lr 0.2 sqrt(max(A, B)) NS(G_t + mu B_t)."""
    lr, wd, mu = 0.1, 0.5, 0.9
    w = torch.nn.Parameter(torch.randn(4, 9, dtype=torch.float64))
    opt = Muon([w], lr=lr, weight_decay=wd, momentum=mu)
    g1, g2 = torch.randn(2, 4, 9, dtype=torch.float64)
    want, buf = w.detach().clone(), torch.zeros(4, 9, dtype=torch.float64)
    for g in (g1, g2):
        buf = mu * buf + g
        want = want * (1 - lr * wd) - lr * 0.2 * 3.0 * orthogonalise(g + mu * buf)
        w.grad = g.clone()
        opt.step()
    torch.testing.assert_close(w.detach(), want)
    with pytest.raises(MechprobeError, match=r"^Muon takes weight matrices only"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


@pytest.mark.parametrize("tie", [False, True])
def test_muon_owns_the_blocks_matrices_and_adamw_the_rest(tie):
    model = tiny_llama(vocab_size=20, layers=2)
    if tie:
        model.lm_head.weight = model.model.embed_tokens.weight
    adam, muon = make_optimizers(model, 1e-3, 0.01, "muon")
    names = {id(p): n for n, p in model.named_parameters()}
    owned = {
        o: sorted(names[id(p)] for g in opt.param_groups for p in g["params"]) for o, opt in (("a", adam), ("m", muon))
    }
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    want = sorted(n for n in names.values() if n.endswith(tuple(f"{p}.weight" for p in projections)))
    assert owned["m"] == want and len(want) == 7 * 2
    assert set(owned["a"]) | set(owned["m"]) == set(names.values()) and not set(owned["a"]) & set(owned["m"])
    assert "model.embed_tokens.weight" in owned["a"] and all(
        "norm" in n or "embed" in n or "lm_head" in n for n in owned["a"]
    )
    (only,) = make_optimizers(model, 1e-3, 0.01, "adamw")
    assert isinstance(only, torch.optim.AdamW) and len(only.param_groups[0]["params"]) == len(names)
    with pytest.raises(MechprobeError, match=r"^OPTIMIZER='sgd': expected one of adamw, muon$"):
        make_optimizers(model, 1e-3, 0.01, "sgd")


def test_resumed_muon_run_steps_as_the_uninterrupted_one():
    """A Trainer restored from another's state after 2 steps takes the same third step (Muon's
    momentum and both schedules travel in the state)."""
    ids, answers = torch.randint(4, 20, (3, 7), generator=torch.Generator().manual_seed(1)), torch.tensor([5, 6, 7])

    def trainer():
        return Trainer(tiny_llama(vocab_size=20), 1e-2, 0.01, 1, 10, "cpu", optimizer="muon")

    a = trainer()
    for _ in range(2):
        a.train_step(ids, None, answers, False)
    st = copy.deepcopy(a.state({}))
    assert st["muon"]["state"] and st["muon_sched"]["last_epoch"] == 2
    b = trainer()
    b.restore(st)
    a.train_step(ids, None, answers, False)
    b.train_step(ids, None, answers, False)
    for (n, p), q in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(p, q, msg=n)
    assert b.opts[1].param_groups[0]["lr"] == a.opts[1].param_groups[0]["lr"] < 1e-2

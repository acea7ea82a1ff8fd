"""The EM accelerators on fixed-point maps whose answers are known."""

import torch

from softmoe_torch.estimation.acceleration import Anderson, squarem_cycle
from softmoe_torch.estimation.objective import Evaluation


def linear_map(R=3, p=6, rate=0.995, seed=0):
    """R affine contractions u -> A u + b with eigenvalues up to ``rate`` and their fixed points."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(R, p, p, generator=gen, dtype=torch.float64))
    eig = torch.linspace(0.1, rate, p, dtype=torch.float64)
    A = Q @ torch.diag_embed(eig.expand(R, p)) @ Q.transpose(1, 2)
    b = torch.randn(R, p, generator=gen, dtype=torch.float64)
    fixed = torch.linalg.solve(torch.eye(p, dtype=torch.float64) - A, b)
    return (lambda u: (A @ u[:, :, None]).squeeze(2) + b), fixed


def test_anderson_solves_a_linear_fixed_point_in_p_plus_one_maps():
    """With depth >= p, Anderson on an affine map is GMRES: exact after p + 1 maps, where plain
    iteration at rate 0.995 would need thousands."""
    R, p = 3, 6
    G, fixed = linear_map(R, p)
    acc, idx = Anderson(R, p, fixed, depth=p), torch.arange(R)
    u = torch.zeros(R, p, dtype=torch.float64)
    for _ in range(p + 2):
        u, extrapolated = acc.propose(idx, u, G(u))
    assert bool(extrapolated.all())
    assert float((u - fixed).abs().max()) < 1e-8
    plain = torch.zeros(R, p, dtype=torch.float64)
    for _ in range(p + 2):
        plain = G(plain)
    assert float((plain - fixed).abs().max()) > 1e-2


def fake_em(G, target):
    """An 'EM' on f(u) = -|u - target|^2 / 2 whose map is G; Evaluations with loss = -f."""

    def evaluate(u):
        return Evaluation(0.5 * ((u - target) ** 2).sum(1), u - target, None, u.clone())

    return (lambda u, resp: (G(u), evaluate(G(u)))), evaluate


def test_anderson_keeps_a_proposal_only_where_it_beats_the_plain_step_and_restarts_there():
    R, p = 2, 4
    G, fixed = linear_map(R, p)
    acc, idx = Anderson(R, p, fixed, depth=3), torch.arange(R)
    em_map, evaluate = fake_em(G, fixed)
    u = torch.zeros(R, p, dtype=torch.float64)
    u, ev = acc.step(em_map, evaluate, u, None, idx)  # no history yet: the plain EM step
    torch.testing.assert_close(u, G(torch.zeros(R, p, dtype=torch.float64)))
    # a map that overshoots a replication's proposal: replication 1's target moves away
    far = fixed.clone()
    far[1] += 100.0
    em_map_far, evaluate_far = fake_em(G, far)
    g = G(u)
    u_new, ev_new = acc.step(em_map_far, evaluate_far, u, None, idx)
    assert bool((ev_new.loss <= evaluate_far(g).loss + 1e-12).all())  # never worse than plain EM
    kept = ~torch.isclose(u_new, g).all(1)
    assert int(acc.count[1]) == (2 if bool(kept[1]) else 0)


def test_squarem_never_does_worse_than_two_plain_steps():
    R, p = 3, 5
    G, fixed = linear_map(R, p, rate=0.99)
    em_map, evaluate = fake_em(G, fixed)
    u0 = torch.zeros(R, p, dtype=torch.float64)
    u, ev = squarem_cycle(em_map, evaluate, u0, None)
    two = G(G(u0))
    assert bool((ev.loss <= evaluate(two).loss + 1e-12).all())
    assert float((u - fixed).norm()) < float((two - fixed).norm())

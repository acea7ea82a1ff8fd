"""Accelerators of the EM iteration u -> M(u), batched over replications (rows of u (m, p)).

Both keep EM monotone: a replication's new point is never less likely than the one before.

- ``squarem_cycle``: SQUAREM (Varadhan & Roland 2008, scheme S3), three EM maps per cycle;
- ``Anderson``: Anderson acceleration (Walker & Ni 2011) of the EM map, as in DAAREM (Henderson &
  Varadhan 2019) but strictly monotone: each iteration maps u to g = M(u) and proposes the
  combination of the last ``depth`` maps whose residuals g - u cancel best; the proposal is kept
  where it is finite and at least as likely as g, else g is taken and that replication's history
  restarts. So every iteration does at least as well as plain EM, and the convergence contract,
  checked on the change of the log-likelihood, can only be met where the plain EM step too moves
  less than its tolerance. One M-step and two evaluations per iteration.

The callables act on the rows of u; an Evaluation's ``loss`` is minus the mean log-likelihood."""

import torch


def pick(mask, a, b):
    """Rows of b where mask (m,), else of a; for tensors or Evaluations (None fields stay None)."""
    if isinstance(a, tuple):
        return type(a)(*(None if x is None else pick(mask, x, y) for x, y in zip(a, b)))
    return torch.where(mask.reshape(-1, *[1] * (a.dim() - 1)), b, a)


def squarem_cycle(em_map, evaluate, u0, resp0):
    """em_map(u, resp) -> (M(u), Evaluation with gradient at M(u)); evaluate(u) -> the value-only
    Evaluation at u. One SQUAREM cycle: two EM maps u1, u2 from u0, the extrapolation u0 - 2 a r + a^2 v
    (r = u1 - u0, v = u2 - 2 u1 + u0, a = -|r| / |v| <= -1), and one EM map u3 from it. u3 is kept
    only where it is finite and at least as likely as u2, so the cycle never does worse than two
    plain EM iterations. Returns (u (m, p), Evaluation at u)."""
    u1, ev1 = em_map(u0, resp0)
    u2, ev2 = em_map(u1, ev1.resp)
    r, v = u1 - u0, u2 - 2 * u1 + u0
    a = -(r.norm(dim=1) / v.norm(dim=1).clamp_min(1e-300)).clamp(min=1.0)[:, None]
    ux = u0 - 2 * a * r + a * a * v
    evx = evaluate(ux)
    ok = torch.isfinite(evx.loss) & torch.isfinite(ux).all(1)
    ux, respx = pick(ok, u2, ux), pick(ok, ev2.resp, evx.resp)
    u3, ev3 = em_map(ux, respx)
    better = ok & torch.isfinite(ev3.loss) & torch.isfinite(ev3.grad).all(1) & (ev3.loss <= ev2.loss)
    return pick(better, u2, u3), pick(better, ev2, ev3)


class Anderson:
    """Each replication's last ``depth`` differences of EM residuals f = M(u) - u and maps g = M(u).
    R replications, p parameters; rows of the calls are replication indices ``idx``."""

    RIDGE = 1e-10  # Tikhonov term of the least-squares problem (normal equations), relative to its trace

    def __init__(self, R: int, p: int, like: torch.Tensor, depth: int):
        self.depth = depth
        self.dF = like.new_zeros(R, depth, p)  # newest first
        self.dG = like.new_zeros(R, depth, p)
        self.f = like.new_zeros(R, p)
        self.g = like.new_zeros(R, p)
        self.count = torch.zeros(R, dtype=torch.long, device=like.device)  # maps seen since the last restart

    def propose(self, idx, u, g):
        """Record the map u -> g for replications idx; -> (x (m, p), extrapolated (m,) bool):
        g - dG gamma with gamma = argmin |f - dF gamma| over the stored differences (x = g where
        there are none yet)."""
        f, k = g - u, self.count[idx]
        has = (k > 0)[:, None, None]
        dF = torch.where(has, torch.cat([(f - self.f[idx])[:, None], self.dF[idx, :-1]], 1), self.dF[idx])
        dG = torch.where(has, torch.cat([(g - self.g[idx])[:, None], self.dG[idx, :-1]], 1), self.dG[idx])
        self.dF[idx], self.dG[idx], self.f[idx], self.g[idx] = dF, dG, f, g
        self.count[idx] = k + 1
        valid = (torch.arange(self.depth, device=u.device) < k.clamp(max=self.depth)[:, None]).to(u.dtype)  # (m, depth)
        A = dF * valid[:, :, None]
        gram = A @ A.transpose(1, 2)
        ridge = self.RIDGE * gram.diagonal(dim1=1, dim2=2).sum(1).clamp_min(1e-300)
        gram = gram + torch.diag_embed(1 - valid + ridge[:, None])  # unused slots: gamma = 0
        gamma = torch.linalg.solve(gram, A @ f[:, :, None])
        x = g - (dG * valid[:, :, None] * gamma).sum(1)
        return x, k > 0

    def step(self, em_map, evaluate, u0, resp0, idx):
        """One accelerated EM iteration of replications idx from u0 (m, p) with responsibilities
        resp0. em_map as in ``squarem_cycle``; evaluate(u) -> the Evaluation with gradient at u.
        Returns (u (m, p), Evaluation at u)."""
        g, ev_g = em_map(u0, resp0)
        x, extrapolated = self.propose(idx, u0, g)
        if not extrapolated.any():
            return g, ev_g
        ev_x = evaluate(x)
        kept = (
            extrapolated
            & torch.isfinite(ev_x.loss)
            & torch.isfinite(x).all(1)
            & torch.isfinite(ev_x.grad).all(1)
            & (ev_x.loss <= ev_g.loss)
        )
        self.count[idx[extrapolated & ~kept]] = 0  # a rejected proposal: the plain EM step; the history restarts
        return pick(kept, g, x), pick(kept, ev_g, ev_x)

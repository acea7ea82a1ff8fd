"""What an objective's evaluation returns, and the sample blocking that the fused objectives share."""

from typing import NamedTuple

import torch

BLOCK = 25_000  # samples per pass of a fused evaluation (its n-long temporaries then stay in cache):
# one Hessian evaluation at n = 1e5 (one thread) takes 10.5 ms in blocks of 2.5e4, 21 ms in one pass
COMPILED_BLOCK = 100_000  # the same for a compiled evaluation, whose passes keep fewer temporaries: a K = 3
# Hessian at n = 1e5 takes 13.6 ms in one pass, 16.9 ms in blocks of 2.5e4 (each call has its own overhead)


class Evaluation(NamedTuple):
    """loss (m,); grad (m, p) or None; hess (m, p, p) or None; resp: responsibilities at u
    (marginal evaluations only; the E-step), rows aligned with u."""

    loss: torch.Tensor
    grad: torch.Tensor | None = None
    hess: torch.Tensor | None = None
    resp: torch.Tensor | None = None


def rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """t[idx] without a copy when idx is every row in order."""
    return (
        t if idx.numel() == t.shape[0] and bool((idx == torch.arange(t.shape[0], device=idx.device)).all()) else t[idx]
    )


class Blocked:
    """An objective evaluated block by block of samples: the subclass sets ``self.space``,
    ``self.blocks`` [(a, b), ...] and ``self.Y`` (R, n), and gives ``_block(u, theta, d1, d2, idx,
    k, order, resp)``, the evaluation over block k (means over that block). Responsibilities have
    the samples on axis 1."""

    exact_hessian = True

    def evaluate(self, u, idx, order: int = 1, resp=None) -> Evaluation:
        theta, d1, d2 = self.space.natural_flat(u, order)
        if len(self.blocks) == 1:
            return self._block(u, theta, d1, d2, idx, 0, order, resp)
        # at large n, one pass per block of samples keeps the n-long temporaries in cache; losses,
        # gradients and Hessians are means over samples, so the blocks' add up weighted by size
        n = self.Y.shape[1]
        parts = [
            self._block(u, theta, d1, d2, idx, k, order, None if resp is None else resp[:, a:b])
            for k, (a, b) in enumerate(self.blocks)
        ]
        weights = [(b - a) / n for a, b in self.blocks]

        def total(name):
            return (
                None if getattr(parts[0], name) is None else sum(w * getattr(e, name) for w, e in zip(weights, parts))
            )

        joined = None if parts[0].resp is None else torch.cat([e.resp for e in parts], dim=1)
        return Evaluation(total("loss"), total("grad"), total("hess"), joined)


def defines_derivatives(cls) -> bool:
    """True when the expert class that gives ``activation`` also gives ``activation_derivatives``
    (a subclass that changes one without the other takes the generic path)."""
    owner = lambda attr: next(c for c in cls.__mro__ if attr in vars(c))  # noqa: E731
    return cls.activation_derivatives is not None and owner("activation") is owner("activation_derivatives")


def sample_blocks(n: int, block: int) -> list:
    """[(a, b), ...]: consecutive ranges of at most ``block`` samples covering 0..n."""
    return [(a, min(a + block, n)) for a in range(0, n, block)]

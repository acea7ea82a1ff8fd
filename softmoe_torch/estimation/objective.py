"""The log-likelihood of R replications as a function of flat unconstrained parameters u (R, p),
with its derivatives: the quantity every fitting method optimizes.

Three implementations share one interface, ``evaluate(u, idx, order, resp) -> Evaluation``:

- ``GenericObjective``: any ``nn.Module`` experts, densities and gates, evaluated with
  ``vmap(functional_call)`` and differentiated by autograd (value and gradient only);
- ``FusedObjective``: the paper's families (one prompt, an index expert with known activation
  derivatives, a density with known derivatives, a softmax or constant gate), evaluated with one
  batched matmul and analytic first and second derivatives;
- ``MixtureFusedObjective`` (``fused_mixture.py``): the same analytic derivatives for any number
  of components, any subset of them trainable (mixtures of experts, several prompts).

``make_objective`` picks a fused one whenever the model allows it. Losses are *minus* mean
log-likelihoods (or minus the EM's Q function when responsibilities ``resp`` are given), so
optimizers minimize them."""

import torch
import torch.nn.functional as F

from ..model.densities import Density
from ..model.experts import IndexExpert
from ..model.gates import ConstantGate, SoftmaxGate
from ..model.mixture import ContaminatedMoE
from ..model.names import PAPER_NAMES
from .evaluation import BLOCK, Blocked, Evaluation, defines_derivatives, rows, sample_blocks
from .fused_mixture import MixtureFusedObjective, mixture_fused_supported
from .params import ParamSpace, batched_log_joint

BETA, TAU, ETA, NU = (PAPER_NAMES[k] for k in ("beta", "tau", "eta", "nu"))  # the fused K = 1 path's parameters


class GenericObjective:
    """Autograd through ``vmap(functional_call)``; X (R, n, d), Y (R, n). resp (m, n, K+1)."""

    exact_hessian = False

    def __init__(self, model, X, Y, space: ParamSpace):
        self.model, self.X, self.Y, self.space = model, X, Y, space

    def evaluate(self, u, idx, order: int = 1, resp=None) -> Evaluation:
        if order > 1:
            raise NotImplementedError("the generic path has no Hessian")
        with torch.enable_grad() if order else torch.no_grad():
            uu = u.detach().requires_grad_(order > 0)
            lj = batched_log_joint(self.model, self.space.to_natural(uu), rows(self.X, idx), rows(self.Y, idx))
            if resp is None:
                loss, new_resp = -torch.logsumexp(lj, -1).mean(-1), torch.softmax(lj.detach(), -1)
            else:
                loss, new_resp = -(resp * lj).sum(-1).mean(-1), None
            grad = torch.autograd.grad(loss.sum(), uu)[0] if order else None
        return Evaluation(loss.detach(), grad, None, new_resp)


def paper_fused_supported(model) -> bool:
    """Whether ``FusedObjective`` can evaluate ``model`` (see the module docstring)."""
    if not isinstance(model, ContaminatedMoE) or len(model.prompts) != 1:
        return False
    prompt, gate = model.prompts[0], model.gate
    expected = {ETA, NU, TAU} | ({BETA} if isinstance(gate, SoftmaxGate) else set())
    return (
        isinstance(prompt.expert, IndexExpert)
        and defines_derivatives(type(prompt.expert))
        and type(prompt.density).derivatives is not Density.derivatives
        and type(gate) in (SoftmaxGate, ConstantGate)
        and set(model.trainable_parameters()) == expected
    )


class FusedObjective(Blocked):
    """Analytic value, gradient and Hessian for the paper's model families. X (R, n, d), Y (R, n);
    the frozen component's log-density L0 (R, n) is computed once. resp: the prompt's
    responsibility (m, n)."""

    exact_hessian = True

    def __init__(self, model, X, Y, space: ParamSpace, block: int = BLOCK):
        self.X, self.Y, self.space = X, Y, space
        n = X.shape[1]
        self.blocks = sample_blocks(n, block)  # sample ranges of one pass each
        # (R, d, n) per block: both layouts of X make every matmul a fast one
        self.Xt_blocks = [X[:, a:b].transpose(1, 2).contiguous() for a, b in self.blocks]
        prompt = model.prompts[0]
        self.activation = type(prompt.expert).activation_derivatives
        self.density = prompt.density
        self.has_beta = BETA in space.slices
        with torch.no_grad():
            R, n, d = X.shape
            self.L0 = model.pretrained(X.reshape(R * n, d), Y.reshape(R * n)).reshape(R, n)

    def _split(self, theta):
        sl = self.space.slices
        beta = theta[:, sl[BETA]] if self.has_beta else None
        return beta, theta[:, sl[TAU]], theta[:, sl[ETA]], theta[:, sl[NU]]

    def _block(self, u, theta, d1, d2, idx, k: int, order: int, resp) -> Evaluation:
        """The evaluation over block k of the samples (means over that block)."""
        beta, tau, eta, nu = self._split(theta)
        a, b = self.blocks[k]
        X, Xt, Y, L0 = (rows(t, idx) for t in (self.X[:, a:b], self.Xt_blocks[k], self.Y[:, a:b], self.L0[:, a:b]))
        n = Y.shape[1]
        if self.has_beta:
            lin = torch.bmm(torch.stack([beta, eta], 1), Xt)  # (m, 2, n): one pass over X
            a, z = lin[:, 0] + tau, lin[:, 1]
        else:
            a, z = tau.expand_as(Y), torch.bmm(eta.unsqueeze(1), Xt).squeeze(1)
        mean, h1, h2 = self.activation(z)
        L1, L1m, L1v, L1mm, L1mv, L1vv = self.density.derivatives(Y, mean, nu)
        log_s = F.logsigmoid(a)
        log_1ms = log_s - a  # log(1 - s) = log s - a
        if resp is None:
            delta = log_s + L1 - log_1ms - L0  # log odds of the prompt given (x, y)
            ll = log_s + L1 - F.logsigmoid(delta)
            r = torch.sigmoid(delta)
            loss, w = -ll.mean(-1), r * (1 - r)
        else:
            r = resp
            loss, w = -(r * log_s + (1 - r) * log_1ms + r * L1).mean(-1), None
        out_resp = r.detach() if resp is None else None
        if order == 0:
            return Evaluation(loss, None, None, out_resp)
        s = torch.exp(log_s)
        la, lm, lv = r - s, r * L1m, r * L1v  # d ll_i / d(a, m, v)
        sl, p = self.space.slices, u.shape[1]
        g = u.new_zeros(u.shape[0], p)
        gx = torch.bmm(torch.stack([la, lm * h1], 1), X) / n  # (m, 2, d)
        if self.has_beta:
            g[:, sl[BETA]] = gx[:, 0]
        g[:, sl[TAU]] = la.mean(-1, keepdim=True)
        g[:, sl[ETA]] = gx[:, 1]
        g[:, sl[NU]] = lv.mean(-1, keepdim=True)
        grad = -g * d1
        if order == 1:
            return Evaluation(loss, grad, None, out_resp)
        zero = torch.zeros_like(r) if w is None else w
        laa = zero - s * (1 - s)
        lam, lav = zero * L1m, zero * L1v
        lmm = zero * L1m * L1m + r * L1mm
        lmv, lvv = zero * L1m * L1v + r * L1mv, zero * L1v * L1v + r * L1vv
        w_ee, w_ae = lmm * h1 * h1 + lm * h2, lam * h1
        H = u.new_zeros(u.shape[0], p, p)
        b, t, e, v = sl.get(BETA), sl[TAU], sl[ETA], sl[NU]

        def put(rows, cols, block):  # a block and its mirror image
            H[:, rows, cols] = block
            H[:, cols, rows] = block.transpose(1, 2)

        vec = torch.bmm(torch.stack([laa, w_ae, lav, lmv * h1], 1), X) / n  # (m, 4, d)
        scalar = lambda q: q.mean(-1).reshape(-1, 1, 1)  # noqa: E731
        H[:, e, e] = torch.bmm(Xt * w_ee.unsqueeze(1), X) / n
        H[:, t, t], H[:, v, v] = scalar(laa), scalar(lvv)
        put(t, v, scalar(lav))
        put(t, e, vec[:, 1:2])
        put(v, e, vec[:, 3:4])
        if self.has_beta:
            H[:, b, b] = torch.bmm(Xt * laa.unsqueeze(1), X) / n
            put(b, e, torch.bmm(Xt * w_ae.unsqueeze(1), X) / n)
            put(t, b, vec[:, 0:1])
            put(v, b, vec[:, 2:3])
        hess = -(d1.unsqueeze(2) * H * d1.unsqueeze(1) + torch.diag_embed(g * d2))
        return Evaluation(loss, grad, hess, out_resp)


def fused_supported(model) -> bool:
    """Whether one of the fused objectives can evaluate ``model``."""
    return paper_fused_supported(model) or mixture_fused_supported(model)


def compiled_path(model) -> bool:
    """Whether ``make_objective`` with ``compile`` evaluates ``model`` through torch.compile (the
    fused mixture path; the paper's one-prompt families keep their own fused objective)."""
    return not paper_fused_supported(model) and mixture_fused_supported(model)


def make_objective(model, X, Y, space: ParamSpace, compile: bool = False):
    """A fused objective where the model allows it (the paper's one-prompt families first), else
    the generic one. ``compile``: the fused mixture path's per-sample work through torch.compile."""
    if paper_fused_supported(model):
        return FusedObjective(model, X, Y, space)
    if mixture_fused_supported(model):
        return MixtureFusedObjective(model, X, Y, space, compile=compile)
    return GenericObjective(model, X, Y, space)

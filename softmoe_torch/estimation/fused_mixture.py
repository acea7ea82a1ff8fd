"""Analytic value, gradient and Hessian of a mixture of experts with K >= 2 components, any subset
of them trainable: ``MixtureOfExperts`` and ``ContaminatedMoE`` with several prompts.

Per sample, the log-likelihood is ll = LSE_k(phi_k) - LSE_k(a_k), phi_k = a_k + L_k, with gate
logits a_k (a_0 = 0), L_k = log f_k(y | m_k, v_k) and expert means m_k = act(z_k). Its derivatives
in the per-sample quantities q (the a_k, and m_k, v_k of the trainable components) are

    d ll / d q_j = r_c D_j - [q_j = a_c] s_c,
    d2 ll / d q_i d q_j = D_i D_j (r_c [c = c'] - r_c r_c') - [both a] (s_c [c = c'] - s_c s_c')
                          + [c = c'] r_c d2 L_c / d q_i d q_j,

with r the posterior, s the gate weights, c, c' the components of q_i, q_j and D = d phi_c / d q
(1, dL/dm or dL/dv). Every quantity is affine in its parameters through the features z = (x, 1)
(times act' for a mean, with act'' curvature), so each block of the Hessian is a weighted Gram
matrix Z^T diag(w) Z. With responsibilities given (the EM's Q function) the posterior-covariance
term drops and r is held fixed."""

import warnings

import torch

from ..model.densities import Density
from ..model.gates import ConstantGate, SoftmaxGate
from ..model.mixture import Mixture
from .evaluation import BLOCK, COMPILED_BLOCK, Blocked, Evaluation, defines_derivatives, rows, sample_blocks
from .params import ParamSpace

EXPERT_PARAMS = ({"eta"}, {"eta", "bias"})  # an index expert's own parameters: eta, and an affine one's bias


def _fusable_component(component) -> bool:
    """Frozen, or fully trainable with an index expert and a density that both give derivatives."""
    trainable = {n for n, p in component.named_parameters() if p.requires_grad}
    if not trainable:
        return True
    expert = component.expert
    names = {n for n, _ in expert.named_parameters()}
    return (
        hasattr(expert, "activation_derivatives")
        and defines_derivatives(type(expert))
        and names in EXPERT_PARAMS
        and trainable == {f"expert.{n}" for n in names} | {"nu"}
        and type(component.density).derivatives is not Density.derivatives
    )


def mixture_fused_supported(model) -> bool:
    """Whether ``MixtureFusedObjective`` can evaluate ``model``: a softmax or constant gate, all its
    parameters trainable; every component frozen or fused-capable (see ``_fusable_component``)."""
    if not isinstance(model, Mixture) or type(model.gate) not in (SoftmaxGate, ConstantGate):
        return False
    return all(p.requires_grad for p in model.gate.parameters()) and all(
        _fusable_component(c) for c in model.components
    )


def _softmax(logits: list):
    """K tensors (m, n) -> (softmax, K tensors (m, n); log-sum-exp (m, n)) with K exponentials and
    one log per sample (K is small: element-wise over the list beats a reduction over a short axis)."""
    top = logits[0]
    for z in logits[1:]:
        top = torch.maximum(top, z)
    e = [torch.exp(z - top) for z in logits]
    total = sum(e)
    return [e_k / total for e_k in e], top + torch.log(total)


_COMPILE = {"failed": None}  # the first compilation failure in this process (then every objective runs eagerly)


def compiled(fn):
    """``fn`` through ``torch.compile`` (inductor with its C++ wrapper, so that the compiled code
    releases the GIL and starts run side by side on threads; dynamic shapes, so that one graph
    serves every n and batch size): the element-wise work fused into a few passes over the samples.
    Where compilation fails (no C++ compiler, an unsupported platform) a warning says so once and
    ``fn`` runs eagerly, as it does after that for the whole process."""
    import torch._dynamo
    import torch.fx.experimental._config

    # one graph per order and batch shape, again for each new model: room for many models in one process
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    # per-sample quantities recomputed in every loop that reads them, however many read them (stored, the Hessian's
    # loops are bound by memory: K = 4 at n = 1e5, 7.7 against 8.8 ms a row)
    options = {"cpp_wrapper": True, "realize_reads_threshold": 1000, "realize_cpu_acc_reads_threshold": 1000}
    fast = torch.compile(fn, dynamic=True, options=options)

    def call(*args):
        if _COMPILE["failed"] is None:
            try:
                # one grad mode, one graph (the fused path needs no autograd); sizes that happen to be
                # equal (2 replications, 2 features) are not taken for one symbol
                with torch.no_grad(), torch.fx.experimental._config.patch(use_duck_shape=False):
                    return fast(*args)
            except Exception as err:  # noqa: BLE001  (a compiler error of any kind: fall back, say so once)
                _COMPILE["failed"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                warnings.warn(
                    f"fit.compile: torch.compile failed ({_COMPILE['failed'][:200]}); fitting without it "
                    "(the same numbers, slower); set fit.compile=false to skip the attempt",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return fn(*args)

    return call


def _features(Zt: torch.Tensor) -> list:
    """The features of Zt (m, F, n) as F tensors (m, n), the last, the constant 1, as None: a sum
    against it reads nothing (compiled, a K = 4 Hessian at n = 1e5 took 8.3 ms with it read, 7.1
    without)."""
    return [*Zt[:, :-1].unbind(1), None]


def _times(w, z):
    """w z, with None for the constant feature 1 (either factor)."""
    return w if z is None else z if w is None else w * z


def _packed(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` with row-major strides, also along axes of length 1 (where ``contiguous``
    keeps a view's strides)."""
    return t.new_empty(t.shape).copy_(t)


class MixtureFusedObjective(Blocked):
    """X (R, n, d), Y (R, n); the frozen components' log-densities are computed once.
    resp: (m, n, K) responsibilities, as the generic objective's. ``compile``: the per-sample
    work through ``torch.compile`` (see ``compiled``; the same numbers to rounding); there a Hessian
    is a value's pass (kept from the last value where that was at the same points: an optimizer values
    a trial before it differentiates there) and a pass that reads the value's posterior and gate
    weights, with no exponential. ``block``: samples per pass, by default ``BLOCK`` eagerly and
    ``COMPILED_BLOCK`` compiled."""

    def __init__(self, model, X, Y, space: ParamSpace, block: int | None = None, compile: bool = False):
        self.Y, self.space = Y, space
        R, n, d = X.shape
        self.K, self.d = len(model.components), d
        self.blocks = sample_blocks(n, block or (COMPILED_BLOCK if compile else BLOCK))
        Z = torch.cat([X, X.new_ones(R, n, 1)], dim=2)  # features (x, 1)
        # per block, packed (a compiled evaluation then sees the same strides at every n): Y (R, n),
        # Z transposed (R, F, n), and for the eager matrix products Z (R, n, F) and the products z_f z_f' that the
        # Hessian's pair weights sum against (R, n, F F) (compiled, both are formed in inductor's loops from Zt)
        self.Yb = [_packed(Y[:, a:b]) for a, b in self.blocks]
        Zb = [_packed(Z[:, a:b]) for a, b in self.blocks]
        self.Zt = [_packed(z.transpose(1, 2)) for z in Zb]
        self.Z = [None if compile else z for z in Zb]
        self.ZZ = [None if compile else _packed((z.unsqueeze(3) * z.unsqueeze(2)).flatten(2)) for z in Zb]
        sl, names = space.slices, model.component_names()
        # frozen k -> L_k per block (R, n); trainable: (k, activation, density, nu slice)
        self.fixed, self.trained = {}, []
        quantities = [("a", k) for k in range(1, self.K)]  # the per-sample quantities q_j
        coef = []  # per linear predictor (gate logits, then expert indices): theta index of each feature, -1 for 0
        p_of = lambda name: list(range(sl[name].start, sl[name].stop)) if name in sl else None  # noqa: E731
        beta, tau = p_of("gate.beta"), p_of("gate.tau")
        for k in range(1, self.K):
            coef.append((beta[(k - 1) * d : k * d] if beta else [-1] * d) + [tau[k - 1]])
        for k, c in enumerate(model.components):
            if any(p.requires_grad for p in c.parameters()):
                eta, bias = p_of(f"{names[k]}.expert.eta"), p_of(f"{names[k]}.expert.bias")
                coef.append(eta + (bias or [-1]))
                self.trained.append((k, type(c.expert).activation_derivatives, c.density, sl[f"{names[k]}.nu"]))
                quantities += [("m", k), ("v", k)]
            else:
                with torch.no_grad():
                    L_k = c(X.reshape(R * n, d), Y.reshape(R * n)).reshape(R, n)
                self.fixed[k] = [_packed(L_k[:, a:b]) for a, b in self.blocks]
        self.quantities = quantities
        self.trained_components = [k for k, *_ in self.trained]
        self.coef_index = torch.tensor(coef, device=X.device)  # (K - 1 + trainable experts, d + 1)
        self._feature_maps(coef, space.dim)
        if compile and X.device.type != "cpu":
            raise ValueError(f"compile=True is for the CPU; the data are on {X.device.type}")
        self.compiled = bool(compile)
        self._values = {}  # compiled: block -> (u, idx, loss, weights) of the last value (``_kept_value``)
        self.per_sample = compiled(self._per_sample) if compile else self._per_sample

    def _feature_maps(self, coef, p: int):
        """Where each parameter sits among the (quantity, feature) coordinates: ``position`` (p,)
        indexes the flattened (Q, d + 1) gradient and each axis of the (Q (d + 1))^2 Hessian."""
        F = self.d + 1
        where = [None] * p  # parameter index -> (quantity j, feature f)
        gate_rows = self.K - 1
        for row, indices in enumerate(coef):
            j = row if row < gate_rows else gate_rows + 2 * (row - gate_rows)  # an expert row is its mean's quantity
            for f, i in enumerate(indices):
                if i >= 0:
                    where[i] = (j, f)
        for j, (kind, _) in enumerate(self.quantities):
            if kind == "v":
                nu = self.trained[(j - gate_rows) // 2][3]
                where[nu.start] = (j, F - 1)
        comps = [k for _, k in self.quantities]
        dev = self.coef_index.device
        self.n_gate = gate_rows
        self.mean_quantity = [
            j for j, (kind, _) in enumerate(self.quantities) if kind == "m"
        ]  # its variance's is j + 1
        self.comps = comps
        # the pairs (j <= j') of quantities whose per-sample Hessian weights are summed against z z':
        # [eager: those within a component, compiled: all], and the eager ones' (rows, columns) as tensors
        pairs = [(j, jj) for j in range(len(comps)) for jj in range(j, len(comps))]
        self.pairs = [[(j, jj) for j, jj in pairs if comps[j] == comps[jj]], pairs]
        self.pair_index = tuple(torch.tensor([pair[i] for pair in self.pairs[0]], device=dev) for i in (0, 1))
        self.position = torch.tensor([j * F + f for j, f in where], device=dev)
        # compiled: where each Hessian entry (a, b) sits in the pair sums (m, pairs, F F) flattened (a pair j <= j'
        # holds its block z_f z_f' summed; below the diagonal, the transposed block of (j', j))
        pair_of = {pair: i for i, pair in enumerate(pairs)}
        self.hess_index = torch.tensor(
            [
                [
                    (pair_of[j, jj] * F + f) * F + ff if j <= jj else (pair_of[jj, j] * F + ff) * F + f
                    for jj, ff in where
                ]
                for j, f in where
            ],
            device=dev,
        )

    def _inputs(self, theta, idx, blk: int, resp) -> tuple:
        """``_per_sample``'s inputs but the last two, for block ``blk`` of problems idx (m,) at theta (m, P)."""
        Zt, Y = rows(self.Zt[blk], idx), rows(self.Yb[blk], idx)
        Z, ZZ = (None if t[blk] is None else rows(t[blk], idx) for t in (self.Z, self.ZZ))
        padded = torch.cat([theta, theta.new_zeros(theta.shape[0], 1)], dim=1)
        coefs = padded[:, self.coef_index]  # (m, gate logits + expert indices, F)
        fixed = tuple(rows(L_k[blk], idx) for L_k in self.fixed.values())
        nus = tuple(theta[:, nu] for *_, nu in self.trained)
        return coefs, Y, Z, Zt, ZZ, fixed, nus, None if resp is None else resp.transpose(1, 2)

    def precompile(self, u, singles_first: bool = False) -> None:
        """Compiled: make (or load from inductor's disk cache) the graphs of a marginal Newton fit, a
        value's and a Hessian's for batches of several problems and of one, at u (R >= 2, p): the
        Hessian of the first batch size, the values of both, then the other Hessian (``singles_first``:
        a batch of one first). Processes started together with the two orders each compile about half
        and load the rest as the other wrote it (each Hessian takes a minute or more to compile)."""
        if not self.compiled:
            return
        several, one = torch.arange(2, device=u.device), torch.arange(1, device=u.device)
        first, second = (one, several) if singles_first else (several, one)

        def hessian(idx):
            theta = self.space.natural_flat(u[idx], 0)[0]
            given = theta.new_zeros(idx.numel(), 2 * self.K, self.blocks[0][1] - self.blocks[0][0])
            self.per_sample(*self._inputs(theta, idx, 0, None), given, 2)

        hessian(first)
        for idx in (first, second):
            self.evaluate(u[idx], idx, 0)
        hessian(second)
        self._values.clear()

    def _block(self, u, theta, d1, d2, idx, blk: int, order: int, resp) -> Evaluation:
        inputs = self._inputs(theta, idx, blk, resp)
        m, n = inputs[1].shape
        given = None
        if self.compiled and order == 2 and resp is None:  # from the weights of a value at u (kept, or made now)
            loss, given = self._kept_value(blk, u, idx) or self.per_sample(*inputs, None, 0)[:2]
        loss_here, weights, g, H = self.per_sample(*inputs, given, order)
        loss, weights = (loss, given) if given is not None else (loss_here, weights)
        out_resp = None if weights is None else weights[:, : self.K].transpose(1, 2)  # (m, n, K)
        if order == 0:
            if self.compiled and resp is None:
                self._values[blk] = (u.clone(), idx.clone(), loss, weights)
            return Evaluation(loss, None, None, out_resp)
        g = (g / n).reshape(m, -1)[:, self.position]
        grad = -g * d1
        if order == 1:
            return Evaluation(loss, grad, None, out_resp)
        if self.compiled:  # the pair sums alone: each entry gathered where it sits
            H = (H[0] / n).reshape(m, -1)[:, self.hess_index]
        else:
            H = self._assemble(*(None if h is None else h / n for h in H))
            H = H[:, self.position][:, :, self.position]  # (m, p, p) in the parameters' order
        hess = -(d1.unsqueeze(2) * H * d1.unsqueeze(1) + torch.diag_embed(g * d2))
        return Evaluation(loss, grad, hess, out_resp)

    def _kept_value(self, blk: int, u, idx):
        """(loss (m,), weights (m, 2K, n)) of the last compiled value of block ``blk`` where it was
        taken at exactly these points u (m, p) of problems idx (m,), else None."""
        kept = self._values.get(blk)
        if kept is None:
            return None
        u_kept, idx_kept, loss, weights = kept
        match = idx.unsqueeze(1) == idx_kept.unsqueeze(0)  # (m, kept rows)
        if not bool(match.any(1).all()):
            return None
        at = match.int().argmax(1)
        if not torch.equal(u_kept[at], u):
            return None
        return loss[at], rows(weights, at)

    def _predictors(self, coefs, Zt) -> list:
        """The linear predictors (gate logits, then expert indices) coefs (m, P, F) times the
        features Zt (m, F, n) -> P tensors (m, n). Eagerly one matrix product; compiled, made in the
        loops that read them (from x alone; stored by a matrix product, a K = 4 Hessian at n = 1e5
        took 7.6 ms against 6.8 and a value 2.6 against 2.2)."""
        if not self.compiled:
            return torch.bmm(coefs, Zt).unbind(1)
        z = _features(Zt)
        return [sum(_times(c[:, f : f + 1], z_f) for f, z_f in enumerate(z)) for c in coefs.unbind(1)]

    def _per_sample(self, coefs, Y, Z, Zt, ZZ, fixed, nus, resp, given, order: int):
        """The block's loss and its sums over samples: coefs (m, predictors, F), Y (m, n), Zt (m, F, n),
        Z (m, n, F) and ZZ (m, n, F F) (both None compiled), the frozen components' log-densities
        (m, n), the trainable ones' variances (m, 1), resp (m, K, n) or None; ``given`` (compiled, order 2,
        resp None): the posterior and gate weights (m, 2K, n) of a value at this point, else None. Returns
        (loss (m,) (None where given), the posterior (m, K, n) (a compiled value's with the gate weights,
        (m, 2K, n)) or None, from order 1 the gradient's sums (m, Q, F), from order 2 the Hessian's sums
        over the pairs of quantities (see ``_hessian``)); element-wise work and
        sums only, so that ``torch.compile`` can fuse it into a few passes. Every per-sample quantity
        is its own (m, n) tensor in a list, never picked by a tensor of indices (for the Hessian, the
        posterior and gate weights are stored once, stacked): compiled, each sum then makes or reads
        the quantities it needs in inductor's fused loops (stacked and gathered by component, a K = 4
        Hessian at n = 1e5 took 27 ms against 16)."""
        gate_rows = self.K - 1
        lin = self._predictors(coefs, Zt)
        A = [torch.zeros_like(Y), *lin[:gate_rows]]  # gate logits, the reference's 0
        L = [None] * self.K
        for k, L_k in zip(self.fixed, fixed):
            L[k] = L_k
        derivs = {}  # trainable component -> (mean's act', act'', the density's derivatives)
        for t, ((k, activation, density, _), nu) in enumerate(zip(self.trained, nus)):
            mean, h1, h2 = activation(lin[gate_rows + t])
            derivs[k] = (h1, h2, density.derivatives(Y, mean, nu))
            L[k] = derivs[k][2][0]
        if given is not None:  # a compiled value's posterior and gate weights at this point: no exponential here
            weights = given.unbind(1)
            r, s = weights[: self.K], weights[self.K :]
            loss = out = None
        else:
            s, log_norm = _softmax(A)
            if resp is None:
                r, lse = _softmax([a + lf for a, lf in zip(A, L)])
                loss = -(lse - log_norm).mean(-1)
                # the posterior, written along the samples; a compiled value's with the gate weights, which a
                # Hessian at the same point then reads
                out = torch.stack([*r, *s] if self.compiled and order == 0 else r, 1)
            else:
                r = resp.unbind(1)
                loss = -sum(r[k] * (A[k] - log_norm + L[k]) for k in range(self.K)).mean(-1)
                out = None
        if order == 0:
            return loss, out, None, None
        if self.compiled and order == 2 and given is None:  # the EM's Q function (a marginal Hessian is given them)
            # the posterior and gate weights stored once (their exponentials are dear); inductor then makes every
            # other per-sample quantity in the Hessian sums' loops from them and the inputs (each stored, some 46
            # buffers, the loops were bound by memory: K = 4 at n = 1e5 took 15 ms against 9)
            stored = torch.stack([*r, *s], 1).unbind(1)
            r, s = stored[: self.K], stored[self.K :]
        # per quantity q_j: its component's posterior rc and gate weight sc, D = d phi / d q_j, act = d q_j /
        # d predictor (act' for a mean, else 1) and G = d ll / d q_j
        ones = torch.ones_like(Y)
        rc = [r[k] for _, k in self.quantities]
        sc = [s[k] for _, k in self.quantities]
        D = [ones if kind == "a" else derivs[k][2][1 if kind == "m" else 2] for kind, k in self.quantities]
        act = [derivs[k][0] if kind == "m" else ones for kind, k in self.quantities]
        G = [rc[j] * D[j] - (sc[j] if kind == "a" else 0) for j, (kind, _) in enumerate(self.quantities)]
        g = self._feature_sums([G_j * act_j for G_j, act_j in zip(G, act)], Z, Zt)  # (m, Q, F)
        if order == 1:
            return loss, out, g, None
        dq = [D_j * act_j for D_j, act_j in zip(D, act)]
        return loss, out, g, self._hessian(Zt, ZZ, rc, sc, dq, G, derivs, resp is None)

    def _feature_sums(self, W: list, Z, Zt):
        """sum_i w_i z_i for each w (m, n) of ``W`` -> (m, len, F); Z (m, n, F) (None compiled), Zt
        (m, F, n). Eagerly one matrix product; compiled, one sum per weight and feature, each weight made in the sums'
        loop (a product with an (n, F) matrix leaves inductor's fused loops and takes longer)."""
        if not self.compiled:
            return torch.bmm(torch.stack(W, 1), Z)
        z = _features(Zt)
        return torch.stack([torch.stack([_times(w, z_f).sum(-1) for z_f in z], -1) for w in W], 1)

    @staticmethod
    def _pair_sums(weights: list, Zt):
        """Compiled: sum_i w_i z_i z_i' for each weight w (m, n) of ``weights`` -> (m, len, F F), one
        sum per weight and distinct feature pair, each weight made in the sums' loops and never stored
        (stacked and multiplied by the (n, F F) products, a K = 3 Hessian at n = 1e5 took 13.5 ms
        against 11.1)."""
        z = _features(Zt)
        F = len(z)
        moments = {(f, ff): _times(z[f], z[ff]) for f in range(F) for ff in range(f, F)}
        out = []
        for w in weights:
            sums = {key: _times(w, mom).sum(-1) for key, mom in moments.items()}
            out.append(torch.stack([sums[min(f, ff), max(f, ff)] for f in range(F) for ff in range(F)], -1))
        return torch.stack(out, 1)

    def _hessian(self, Zt, ZZ, rc, sc, dq, G, derivs, marginal: bool):
        """The Hessian's sums over samples, for ``_assemble``: (pair blocks (m, pairs, F F), the
        posterior's Gram (m, Q F, Q F) or None, the normalizer's (m, a F, a F) or None). Per pair
        q <= q' of quantities, a per-sample weight summed against z z': within a component, the
        posterior's r_c dq_q dq_q' (marginal only) and the curvature (the density's second
        derivatives, the mean's act'', the gate normalizer's -s_q on its diagonal); across
        components, minus w_q w_q' of the posterior covariance (marginal only, w = r dq) and plus
        s_q s_q' of the normalizer between gate logits. Compiled, every pair gets its whole weight
        (fused, the fewest passes); eagerly, only the within-component pairs, and the two cross
        terms are Gram matrices of (quantity, feature) vectors (the fewest eager operations).
        Lists over the Q quantities of (m, n) tensors: dq, d phi / d predictor (1 for a gate logit);
        rc, sc, each quantity's component's posterior and gate weight; G, d ll / d q."""
        a = self.n_gate
        w = [r_j * dq_j for r_j, dq_j in zip(rc, dq)]  # d ll / d predictor through each quantity's component
        curvature = {}  # (j, j') -> weight: the density's second derivatives and the mean's act''
        for k, qm in zip(self.trained_components, self.mean_quantity):
            h1, h2, dens = derivs[k]
            rk = rc[qm]
            curvature[(qm, qm)] = rk * dens[3] * h1 * h1 + G[qm] * h2
            curvature[(qm, qm + 1)] = rk * dens[4] * h1
            curvature[(qm + 1, qm + 1)] = rk * dens[5]
        for q in range(a):  # the gate's log-normalizer, on its diagonal: -s_k
            curvature[(q, q)] = -sc[q]
        if self.compiled:
            weights = []
            for q, qq in self.pairs[1]:
                terms = [curvature[(q, qq)]] if (q, qq) in curvature else []
                if marginal:
                    same = self.comps[q] == self.comps[qq]
                    terms.append(w[q] * (dq[qq] - w[qq]) if same else -w[q] * w[qq])
                if q < a and qq < a:
                    terms.append(sc[q] * sc[qq])
                weights.append(sum(terms) if terms else torch.zeros_like(dq[0]))
            return self._pair_sums(weights, Zt), None, None
        (m, n), F = dq[0].shape, Zt.shape[1]
        W = dq[0].new_zeros(m, len(self.pairs[0]), n)
        for p, pair in enumerate(self.pairs[0]):
            if marginal:
                torch.mul(w[pair[0]], dq[pair[1]], out=W[:, p])
            if pair in curvature:
                W[:, p] += curvature[pair]
        blocks = torch.bmm(W, ZZ)
        features = lambda v: (torch.stack(v, 1).unsqueeze(2) * Zt.unsqueeze(1)).reshape(m, len(v) * F, n)  # noqa: E731
        gram = lambda V: torch.bmm(V, V.transpose(1, 2))  # noqa: E731
        return blocks, gram(features(w)) if marginal else None, gram(features(sc[:a]))

    def _assemble(self, blocks, posterior, normalizer):
        """Eagerly: the Hessian of the mean ll in (quantity, feature) coordinates, (m, Q F, Q F), from
        the means over samples of ``_hessian``'s sums."""
        m, Q, F = blocks.shape[0], len(self.quantities), self.d + 1
        j, jj = self.pair_index
        blocks = blocks.reshape(m, -1, F, F)  # (m, pairs, F, F)
        H = blocks.new_zeros(m, Q, Q, F, F)
        H[:, j, jj] = blocks
        off = j != jj
        H[:, jj[off], j[off]] = blocks[:, off].transpose(2, 3)
        H = H.transpose(2, 3).reshape(m, Q * F, Q * F)
        if posterior is not None:  # minus (sum_c r_c V_c)(...)^T of the posterior covariance
            H -= posterior
        if normalizer is not None:  # plus (sum_k s_k z)(...)^T of the gate's normalizer
            aF = normalizer.shape[1]
            H[:, :aF, :aF] += normalizer
        return H

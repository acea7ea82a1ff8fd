"""Voronoi losses between a fitted and a true mixing measure of a softmax-gated mixture of experts
(Nguyen, Nguyen & Ho, NeurIPS 2023).

A mixture of K components is the measure G = sum_i exp(b0_i) delta_(b1_i, a_i, c_i, v_i): gate
intercept b0 and slope b1 (component 0, the gate's reference, has b0 = 0, b1 = 0), expert slope a,
expert intercept c (0 for an expert without one) and variance v. Each fitted atom belongs to the
Voronoi cell A_j of its nearest true atom (Euclidean distance over (b1, a, c, v)). With
Delta = fitted - true atom and M_j = sum_{i in A_j} exp(b0_i):

    D1 = sum_j |M_j - exp(b0*_j)| + sum_j sum_{i in A_j} exp(b0_i) (|Db1| + |Da| + |Dc| + |Dv|)
    D2 = sum_j |M_j - exp(b0*_j)| + sum_{j: |A_j| = 1} (the same linear terms)
         + sum_{j: |A_j| > 1} sum_{i in A_j} exp(b0_i) (|Db1|^r + |Dc|^r + |Da|^(r/2) + |Dv|^(r/2)),
    r = rbar(|A_j|) = 4, 6 for cells of 2, 3 atoms (2 m beyond: the conjectured pattern),

|.| the Euclidean norm of a vector. The softmax gate is the same under a common translation of all
logits, (b0_i, b1_i) -> (b0_i + t0, b1_i + t1), so the papers define the losses as the infimum over
(t0, t1), applied to the true measure: the mass term becomes |M_j - exp(b0*_j + t0)|, the atom
terms keep the fitted weights exp(b0_i) and compare b1_i with b1*_j + t1 (``papers_loss``; written
with the infimum by the dendrogram paper, arXiv 2510.12744, its over-fit loss D_O). That value still
depends on which fitted component carries logit 0, which multiplies every fitted weight, so the
fitted measure is first put on a canonical scale (``canonical_scale``: total mass equal to the
truth's); ``scale=False`` gives the papers' value without it. For fixed t1 a loss is piecewise linear
and convex in exp(t0), so its minimum over t0 is found exactly among its breakpoints; t1 is found
by Nelder-Mead from the best of t1 = 0 and every alignment of a fitted with a true gate slope.
The variants ``*_fixed`` take the parametrization as fitted (t = 0, no scale: both measures with
logit 0 for component 0, as the sibling code computes them), which a fit whose reference component
went to another true atom, or whose reference cell holds several atoms, never brings to zero.
Cells are drawn by Euclidean distance over (b1 + t1, a, c, v), whose scales mix, as the papers do.

Regression mixtures of experts fitted by least squares (``regression_atoms``, ``ls_errors``) use
the least-squares papers' loss, kind 'ls' (Nguyen, Ho & Rinaldo: ICML 2024, arXiv 2402.02952, for
the softmax gate; NeurIPS 2024, arXiv 2405.13997, for the sigmoid gate; implemented from their
abstracts' description as the issue gives it, their full texts being out of our reach): cells on
(b1, a, b) (no variance), linear terms |Db1| + |Da| + |Db| in a cell of one atom, squared ones
|Db1|^2 + |Da|^2 + |Db|^2 in a cell of several. Under a softmax gate the masses are exp(b0) with
the translation infimum above; under a sigmoid gate, whose weights are not invariant to any
translation, the masses are sigmoid(b0_i) against sigmoid(b0*_j), with no translation and no scale."""

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

PARTS = ("gate_slope", "expert_slope", "expert_bias", "variance")


def rbar(m: int) -> int:
    """The exponent of a cell of m >= 2 atoms: 4 and 6 for 2 and 3 (Ho & Nguyen), 2 m beyond (conjectured)."""
    return 2 * m


def atoms(params: dict, names: list, r: int) -> dict:
    """Replication r of ``params`` {name: (R, ...)} as atoms: intercept (K,), gate_slope (K, d),
    expert_slope (K, q), expert_bias (K,), variance (K,); ``names`` the components' parameter prefixes."""
    K = len(names)
    tau = np.asarray(params["gate.tau"][r], float).reshape(-1)
    beta = (
        np.asarray(params["gate.beta"][r], float).reshape(K - 1, -1) if "gate.beta" in params else np.zeros((K - 1, 1))
    )
    expert = [np.asarray(params[f"{p}.expert.eta"][r], float).reshape(-1) for p in names]
    bias = [float(params[f"{p}.expert.bias"][r]) if f"{p}.expert.bias" in params else 0.0 for p in names]
    return {
        "intercept": np.concatenate([[0.0], tau]),
        "gate_slope": np.vstack([np.zeros((1, beta.shape[1])), beta]),
        "expert_slope": np.vstack(expert),
        "expert_bias": np.array(bias),
        "variance": np.array([float(params[f"{p}.nu"][r]) for p in names]),
    }


def regression_atoms(params: dict, K: int, gate: str, r: int) -> dict:
    """Replication r of a regression mixture's ``params`` {name: (R, ...)} (K experts
    ``experts.<k>.eta``/``.bias``, ``gate.beta``/``.tau``) as atoms in the layout of ``atoms``;
    under a 'softmax' gate expert 0 is the reference (b0 = 0, b1 = 0); the variance column is 0."""
    tau = np.asarray(params["gate.tau"][r], float).reshape(-1)
    beta = np.asarray(params["gate.beta"][r], float).reshape(len(tau), -1)
    if gate == "softmax":
        tau, beta = np.concatenate([[0.0], tau]), np.vstack([np.zeros((1, beta.shape[1])), beta])
    return {
        "intercept": tau,
        "gate_slope": beta,
        "expert_slope": np.vstack([np.asarray(params[f"experts.{k}.eta"][r], float).reshape(-1) for k in range(K)]),
        "expert_bias": np.array([float(params[f"experts.{k}.bias"][r]) for k in range(K)]),
        "variance": np.zeros(K),
    }


WEIGHTS = {"softmax": np.exp, "sigmoid": expit}  # an atom's mass from its gate intercept b0


class _Pairs:
    """The pairs (fitted atom i, true atom j) of two measures, with what does not move with the
    gate-slope translation t1 computed once: a search over t1 evaluates a loss some hundreds of times
    a fit. Weights: each atom's mass from its intercept under ``gate``."""

    def __init__(self, fit: dict, true: dict, gate: str = "softmax"):
        self.fit_slope, self.true_slope = fit["gate_slope"], true["gate_slope"]
        self.w, self.target = WEIGHTS[gate](fit["intercept"]), WEIGHTS[gate](true["intercept"])
        others = lambda a: np.hstack([a["expert_slope"], a["expert_bias"][:, None], a["variance"][:, None]])  # noqa: E731
        self.others = ((others(fit)[:, None, :] - others(true)[None, :, :]) ** 2).sum(-1)  # (K, k*)
        self.parts = {  # the t1-free parts' differences, (K, k*) each
            "expert_slope": np.linalg.norm(fit["expert_slope"][:, None, :] - true["expert_slope"][None], axis=2),
            "expert_bias": np.abs(fit["expert_bias"][:, None] - true["expert_bias"][None]),
            "variance": np.abs(fit["variance"][:, None] - true["variance"][None]),
        }
        self.rows = np.arange(len(self.w))
        self._by_cells = {}  # (kind, cells) -> per_cells(kind, cells)

    def _squares(self, t1) -> np.ndarray:
        """(K, k*): each pair's squared distance of gate slopes b1_i + t1 - b1*_j."""
        return (((self.fit_slope + t1)[:, None, :] - self.true_slope[None]) ** 2).sum(-1)

    def cells(self, t1, squares=None) -> np.ndarray:
        """The true atom (index) of each fitted atom's Voronoi cell, (K,): the nearest by Euclidean
        distance over (b1 + t1, a, c, v)."""
        return np.argmin((self._squares(t1) if squares is None else squares) + self.others, axis=1)

    def deltas(self, cell: np.ndarray, t1, squares=None) -> dict:
        """Per fitted atom, the norm of each part's difference to its cell's true atom, (K,) each."""
        squares = self._squares(t1) if squares is None else squares
        return {p: v[self.rows, cell] for p, v in {"gate_slope": np.sqrt(squares), **self.parts}.items()}

    def per_cells(self, kind: str, cell: np.ndarray):
        """What depends on the cells (K,) alone, kept per cells (a search over t1 rarely moves them):
        the fitted masses M_j (k*,), the powers of ``kind`` ({part: (K,)}, ``_powers``), the t1-free
        parts' powered differences [(K,)] in PARTS' order, the breakpoints mu = M_j / target_j of the
        translated mass term and its value sum_j |M_j - mu target_j| at each."""
        key = (kind, cell.tobytes())
        if key not in self._by_cells:
            sizes = np.bincount(cell, minlength=len(self.target))
            mass = np.bincount(cell, weights=self.w, minlength=len(sizes))
            powers = _powers(kind, sizes[cell])
            powered = [self.parts[p][self.rows, cell] ** powers[p] for p in PARTS[1:]]
            mus = (mass / self.target)[mass > 0]
            spread = np.abs(mass[None] - mus[:, None] * self.target[None]).sum(1)
            self._by_cells[key] = mass, powers, powered, mus, spread
        return self._by_cells[key]

    def terms(self, kind: str, t1):
        """At t1: the cells (K,), each true atom's fitted mass M_j (k*,), and the atom terms of
        ``kind`` summed at the fitted weights (true masses: ``target``, exp(b0*_j), or sigmoid(b0*_j)
        under a sigmoid gate)."""
        squares = self._squares(t1)
        cell = self.cells(t1, squares)
        mass, powers, powered, *_ = self.per_cells(kind, cell)
        cost = np.sqrt(squares[self.rows, cell]) ** powers["gate_slope"]
        for term in powered:  # the parts summed in PARTS' order
            cost = cost + term
        return cell, mass, float((self.w * cost).sum())


def _powers(kind: str, m: np.ndarray) -> dict:
    """The power of each part's difference in an atom's term, {part: (K,)}, for atoms in cells of
    m (K,) atoms: 1 throughout for 'd1'; for 'ls' 1 in a cell of one, 2 in a cell of several; for
    'd2' 1 in a cell of one, r = rbar(m) (gate slopes, expert biases) and r / 2 (expert slopes,
    variances) in a cell of several."""
    one = np.ones(len(m))
    if kind == "d1":
        return dict.fromkeys(PARTS, one)
    if kind == "ls":
        return dict.fromkeys(PARTS, np.where(m > 1, 2.0, 1.0))
    r = np.where(m > 1, 2.0 * m, 1.0)
    half = np.where(m > 1, r / 2, 1.0)
    return {"gate_slope": r, "expert_bias": r, "expert_slope": half, "variance": half}


def _best_t1(objective, fit: dict, true: dict) -> np.ndarray:
    """The gate-slope translation t1 minimizing ``objective(t1)``: the best of t1 = 0 and every
    alignment of a fitted with a true gate slope (the cells jump with t1, so a local search alone can
    stall), refined by Nelder-Mead from there; deterministic."""
    d = fit["gate_slope"].shape[1]
    starts = [np.zeros(d)] + [
        true["gate_slope"][j] - fit["gate_slope"][i]
        for i in range(len(fit["intercept"]))
        for j in range(len(true["intercept"]))
    ]
    best = min(starts, key=objective)
    found = minimize(objective, best, method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 2000})
    return found.x if found.fun < objective(best) else best


def canonical_scale(fit: dict, true: dict) -> dict:
    """``fit`` with every fitted intercept shifted by one constant so that its total mass
    sum_i exp(b0_i) equals the truth's sum_j exp(b0*_j): the fitted measure's scale, which the
    choice of the fitted reference component would otherwise set, fixed before the papers' infimum."""
    shift = np.logaddexp.reduce(true["intercept"]) - np.logaddexp.reduce(fit["intercept"])
    return {**fit, "intercept": fit["intercept"] + shift}


def _papers_at(kind: str, pairs: _Pairs, t1, translate: bool = True):
    """(loss, mu, cell) of the papers' loss between the measures of ``pairs`` at gate-slope
    translation t1, minimized over mu = exp(t0) applied to the true masses if ``translate`` (else
    mu = 1): sum_j |M_j - mu exp(b0*_j)| is convex and piecewise linear in mu, so its minimum lies at
    a breakpoint mu = M_j / exp(b0*_j); the atom terms keep the fitted weights."""
    cell, mass, linear = pairs.terms(kind, t1)
    if not translate:
        return float(np.abs(mass - pairs.target).sum()) + linear, 1.0, cell
    mus, spread = pairs.per_cells(kind, cell)[3:]
    values = spread + linear
    best = int(np.argmin(values))  # the first of equal values
    return float(values[best]), float(mus[best]), cell


def papers_loss(kind: str, fit: dict, true: dict, scale: bool = True, translate: bool = True):
    """(loss, t1, mu) of ``kind`` 'd1', 'd2' or 'ls' as the papers define it: the infimum over the gate's
    translation (t0, t1) applied to the true measure (Nguyen, Nguyen & Ho, NeurIPS 2023; written with
    the infimum by the dendrogram paper, arXiv 2510.12744, its over-fit loss D_O),

        sum_j |sum_{i in A_j} exp(b0_i) - exp(b0*_j + t0)| + sum_j sum_{i in A_j} exp(b0_i) cost_i,

    cost_i the atom terms of the module docstring with the gate slopes compared as b1_i + t1 - b1*_j
    (t1's sign is a convention) and the cells A_j drawn at that t1, mu = exp(t0). With ``scale`` the
    fitted measure is first put on the canonical scale (``canonical_scale``), so that translating
    every fitted logit by any (s0, s1) leaves the loss unchanged; without it, the value depends on
    which fitted component carries logit 0. ``translate=False``: the value at t = 0 (mu = 1), as
    fitted. The translation never scales the atom terms, so the value has no cap."""
    fit = canonical_scale(fit, true) if scale else fit
    pairs = _Pairs(fit, true)
    t1 = (
        _best_t1(lambda t: _papers_at(kind, pairs, t)[0], fit, true)
        if translate
        else np.zeros(fit["gate_slope"].shape[1])
    )
    loss, mu, _ = _papers_at(kind, pairs, t1, translate)
    return loss, t1, mu


def _in_cells_of_several(kind: str, deltas: dict, w: np.ndarray, cell: np.ndarray, sizes: np.ndarray) -> dict:
    """{part: value}: in each cell A_j of several atoms, the power mean of the part's differences
    weighted by the atoms' shares of the cell's mass, (sum_{i in A_j} w_i |D_i|^q / M_j)^(1/q) with q
    the loss's power of that part there (``_powers``: for D2 in a cell of two, q = 4 for gate slopes
    and biases, 2 for expert slopes and variances, so that its terms bound it: a D2 of order n^-1/2
    over a cell of mass bounded below gives n^-1/8 and n^-1/4); the largest over such cells; NaN
    where every cell holds one atom."""
    several = [j for j in range(len(sizes)) if sizes[j] > 1]
    powers = _powers(kind, sizes[cell])
    out = {}
    for p, diff in deltas.items():
        values = []
        for j in several:
            i = cell == j
            q = powers[p][i][0]
            values.append(float(((w[i] * diff[i] ** q).sum() / w[i].sum()) ** (1 / q)))
        out[f"{p}_in_cells"] = max(values) if values else float("nan")
    return out


def _at_translation(kind: str, fit: dict, true: dict, t1, mu: float, gate: str = "softmax") -> dict:
    """At the translation (t1, mu = exp(t0)) of the loss ``kind``: ``mass`` (max over cells of
    |M_j - mu target_j|), the largest error of each part over the fitted atoms, the same inside cells
    of several atoms weighted by the atoms' masses (``<part>_in_cells``, ``_in_cells_of_several``),
    and ``cells`` (atoms per true atom, '2+1')."""
    pairs = _Pairs(fit, true, gate)
    cell, mass, _ = pairs.terms(kind, t1)
    sizes = np.bincount(cell, minlength=len(true["intercept"]))
    out = {"mass": float(np.abs(mass - mu * pairs.target).max())}
    parts = PARTS[:-1] if kind == "ls" else PARTS  # a regression mixture has no variance per atom
    deltas = {p: v for p, v in pairs.deltas(cell, t1).items() if p in parts}
    out.update({p: float(v.max()) for p, v in deltas.items()})
    out.update(_in_cells_of_several(kind, deltas, pairs.w, cell, sizes))
    out["cells"] = "+".join(str(c) for c in sizes)
    return out


def ls_errors(fit: dict, true: dict, gate: str) -> dict:
    """The loss 'ls' of a least-squares fit of a regression mixture (atoms of ``regression_atoms``)
    under its ``gate`` ('softmax': the papers' infimum over the translation, on the canonical
    scale; 'sigmoid': masses sigmoid(b0), no translation) as ``d1``; at its minimizing translation
    ``mass``, the largest error of each part over the fitted atoms (gate_slope, expert_slope,
    expert_bias) and ``cells`` (``_at_translation``)."""
    if gate == "softmax":
        loss, t1, mu = papers_loss("ls", fit, true)
        fit = canonical_scale(fit, true)
    elif gate == "sigmoid":
        t1, mu = np.zeros(fit["gate_slope"].shape[1]), 1.0
        loss = _papers_at("ls", _Pairs(fit, true, gate), t1, translate=False)[0]
    else:
        raise ValueError(f"gate must be softmax or sigmoid, got {gate!r}")
    return {"d1": loss, **_at_translation("ls", fit, true, t1, mu, gate)}


def voronoi_errors(fit: dict, true: dict, main: str) -> dict:
    """Every loss and per-part error of one fit: d1 and d2 (the papers' loss on the canonical
    scale), d1_unscaled and d2_unscaled (without the scale fix), d1_fixed and d2_fixed (as fitted,
    no translation); and at the translation minimizing ``main`` ('d1' or 'd2') the mass, the
    largest error of each part and the cells (``_at_translation``)."""
    out, at = {}, {}
    for kind in ("d1", "d2"):
        out[kind], *at[kind] = papers_loss(kind, fit, true)
        out[f"{kind}_unscaled"] = papers_loss(kind, fit, true, scale=False)[0]
        out[f"{kind}_fixed"] = papers_loss(kind, fit, true, scale=False, translate=False)[0]
    return {**out, **_at_translation(main, canonical_scale(fit, true), true, *at[main])}


def theory_slope(quantity: str, largest_cell: int, exact: bool):
    """The rate (exponent of n) the theory gives a quantity of ``voronoi_errors`` when the largest
    Voronoi cell holds ``largest_cell`` atoms; None where it makes no claim (a *_fixed loss of an
    over-specified fit need not vanish; no cell of several atoms for a *_in_cells error)."""
    if quantity.endswith("_fixed") and not exact or quantity.endswith("_in_cells") and largest_cell == 1:
        return None
    base = quantity.removesuffix("_fixed").removesuffix("_unscaled").removesuffix("_in_cells")
    if base in ("d2", "mass") or largest_cell == 1:
        return -0.5
    r = rbar(largest_cell)
    return -1 / (2 * r) if base in ("d1", "gate_slope", "expert_bias") else -1 / r  # expert_slope, variance: -1/r

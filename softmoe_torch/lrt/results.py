"""The result of a bootstrap likelihood-ratio test: statistic, p-value, the bootstrap statistics,
what failed, the observed fits; a summary, a histogram and a JSON record."""

from dataclasses import dataclass, field

import numpy as np

from .combine import pooled_pvalues


@dataclass
class BootstrapTest:
    """``raw_statistic`` and ``raw_boot`` (B,): 2 (loglik H1 - loglik H0) as fitted (may be
    negative when a fit ends below the null); ``boot_status`` the refits' statuses ('converged',
    why not, or 'null ...' when the null's refit did not converge); ``boot_degenerate`` whether an
    H1 refit is a spike (``degeneracy.py``); ``rule`` how unconverged refits count
    ('conservative': as LR*_b >= LR, or 'as_fitted'); ``observed`` the H1 fit's ``FitResults``
    (``observed_null`` the H0 fit's, when H0 is fitted); ``iterations`` the cap on the
    alternative's fit (None: fitted to convergence, the MLE, and the statistic clamped at 0; K: at
    most K iterations from each start, a statistic of its own that is not clamped, and stopping at
    the cap is the procedure, not a failure); ``starts`` the alternative's starts ('policy': the
    estimator's own init policy; 'anchored': at the null, ``anchored_starts``)."""

    test: str
    raw_statistic: float
    raw_boot: list
    boot_status: list
    boot_degenerate: list
    observed: object
    rule: str
    seconds: float
    observed_null: object = None
    iterations: int | None = None
    starts: str = "policy"
    broad: tuple | None = None
    raw_broad: float | None = None
    boot_broad: list | None = None
    alpha_levels: tuple = field(default=(0.05, 0.01))

    @property
    def B(self) -> int:
        return len(self.raw_boot)

    @property
    def statistic(self) -> float:
        """LR: max(0, raw) for the MLE (the null is the limit of the alternative); raw for a capped fit."""
        return self.raw_statistic if self.iterations else max(0.0, self.raw_statistic)

    @property
    def boot(self) -> np.ndarray:
        """The bootstrap statistics LR*_b, computed as LR is (B,)."""
        raw = np.array(self.raw_boot, dtype=float)
        return raw if self.iterations else np.maximum(0.0, raw)

    @property
    def counted_high(self) -> np.ndarray:
        """(B,) bool: refits counted as LR*_b >= LR whatever their value (not finite; unconverged
        under the conservative rule, where stopping at the cap of a capped fit is not unconverged)."""
        failed = ~np.isfinite(np.array(self.raw_boot, dtype=float))
        if self.rule == "conservative":
            done = ("converged", "max_iter") if self.iterations else ("converged",)
            failed |= np.array([s not in done for s in self.boot_status])
        return failed

    @property
    def n_failed(self) -> int:
        """Refits counted as LR*_b >= LR whatever their value."""
        return int(self.counted_high.sum())

    def _parts(self) -> tuple:
        """The observed row (1, J) and the draws' (B, J) of every part, refits counted high at +inf."""
        obs, draws = [self.statistic], [np.where(self.counted_high, np.inf, self.boot)]
        if self.broad is not None:
            obs.append(self.raw_broad)
            draws.append(np.where(self.counted_high, np.inf, np.array(self.boot_broad, dtype=float)))
        return np.array([obs]), np.stack(draws, axis=1)

    @property
    def pvalue(self) -> float:
        """(1 + #{LR*_b >= LR}) / (B + 1), refits counted high included; with the broad part, the
        min-p combination of both parts on the same draws."""
        return float(pooled_pvalues(*self._parts())[0])

    @property
    def part_pvalues(self) -> dict:
        """Each part's own bootstrap p-value, {'fitted': p} (and 'broad')."""
        obs, draws = self._parts()
        names = ["fitted", "broad"][: obs.shape[1]]
        return {k: float(pooled_pvalues(obs[:, [j]], draws[:, [j]])[0]) for j, k in enumerate(names)}

    def counts(self) -> dict:
        """How the refits ended, and the fits that need a second look."""
        statuses = {}
        for s in self.boot_status:
            key = s.split(":")[0]
            statuses[key] = statuses.get(key, 0) + 1
        return {
            "statuses": statuses,
            "n_failed": self.n_failed,
            "n_degenerate": int(sum(self.boot_degenerate)),
            "n_negative": int(sum(b < 0 for b in self.raw_boot)),
            "observed_negative": self.raw_statistic < 0,
            "observed_degenerate": self.observed.degenerate[0],
            "observed_status": self.observed.status[0],
        }

    def to_dict(self) -> dict:
        """JSON-ready: statistic, pvalue, B, n_failed, seconds, counts, the bootstrap statistics."""
        return {
            "test": self.test,
            "statistic": self.statistic,
            "pvalue": self.pvalue,
            "B": self.B,
            "n_failed": self.n_failed,
            "rule": self.rule,
            "iterations": self.iterations,
            "starts": self.starts,
            "broad": list(self.broad) if self.broad is not None else None,
            "part_pvalues": self.part_pvalues,
            "seconds": self.seconds,
            "n": self.observed.n,
            **self.counts(),
            "raw_statistic": self.raw_statistic,
            "boot": [float(b) for b in self.raw_boot],
            "boot_status": self.boot_status,
            "boot_degenerate": self.boot_degenerate,
            "broad_statistic": self.raw_broad,
            "boot_broad": self.boot_broad,
        }

    def summary(self) -> str:
        c = self.counts()
        rule = "counted as LR* >= LR" if self.rule == "conservative" else "entered as fitted"
        fitted = (
            "the alternative fitted to convergence (the MLE)"
            if not self.iterations
            else f"the alternative fitted by at most {self.iterations} iterations from each start (the EM-test form)"
        )
        lines = [
            f"Parametric-bootstrap likelihood-ratio test: {self.test}, n = {self.observed.n}, B = {self.B}; {fitted}",
            f"LR = {self.statistic:.4f}   p-value = {self.pvalue:.4f}"
            + "".join(f"   {'reject' if self.pvalue <= a else 'keep'} H0 at {a:g}" for a in self.alpha_levels),
            f"bootstrap LR*: median {np.median(self.boot):.3f}, 95% quantile {np.quantile(self.boot, 0.95):.3f}",
            *self._broad_lines(),
            f"refits: {', '.join(f'{k} {v}' for k, v in sorted(c['statuses'].items()))}; unconverged {rule}; "
            f"{c['n_failed']} counted as LR* >= LR; {c['n_degenerate']} degenerate; {c['n_negative']} below the null",
            f"observed fit: {c['observed_status']}",
        ]
        lines += [
            f"WARNING: the observed fit is degenerate: {reason}; LR then measures a spike on a few observations"
            for reason in c["observed_degenerate"]
        ]
        if c["observed_negative"] and not self.iterations:
            lines.append(
                "note: the alternative's fit ended below the null's likelihood "
                f"(raw LR {self.raw_statistic:.4g}); LR = 0"
            )
        lines.append(f"{self.seconds:.1f} s")
        return "\n".join(lines)

    def _broad_lines(self) -> list:
        if self.broad is None:
            return []
        p = self.part_pvalues
        ratios = ", ".join(f"{k:g}" for k in self.broad)
        return [
            f"parts: the fitted prompt's LR p = {p['fitted']:.4f}; a broad prompt's LR (variance x {ratios}) "
            f"= {self.raw_broad:.4f}, p = {p['broad']:.4f}; the p-value above combines both (min-p)"
        ]

    def histogram(self, path):
        """The bootstrap statistics with the observed one marked, to ``path`` (PNG or PDF)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        finite = self.boot[np.isfinite(self.boot)]
        ax.hist(finite, bins=min(60, max(10, self.B // 10)), color="tab:blue", alpha=0.7, label=f"LR*, B = {self.B}")
        ax.axvline(
            self.statistic, color="tab:red", lw=2, label=f"observed LR = {self.statistic:.2f}, p = {self.pvalue:.3g}"
        )
        ax.set_xlabel("likelihood-ratio statistic")
        ax.set_ylabel("bootstrap data sets")
        ax.set_title(f"{self.test} (n = {self.observed.n}); {self.n_failed} refits counted as LR* >= LR", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

"""The contamination test beside the field's bootstrap likelihood-ratio tests, on the same data:
flexmix's LR_test (a k = 1 vs 2 ungated Gaussian regression mixture, parametric bootstrap) and
mixtools' boot.comp (the same comparison, mix.type = "regmix"). Neither has a frozen component or
an input-dependent gate: they answer a weaker question; what is compared is the cost of a refit.

    python experiments/contamination/contamination_benchmark.py [--n 10000] [--B 999] [--flexmix-B 20] [--mixtools-B 1] [--dir DIR]

writes DIR/data.csv (n draws under H0 of the distinguishable setting: X ~ N(0, I_8), y = tanh(x_1)
+ Laplace noise of variance 0.001), DIR/flexmix.R and DIR/mixtools.R, and prints the three
commands to time, each a whole process (start-up included), e.g.:

    /usr/bin/time -v python -m softmoe_torch.bootstrap_test data=DIR/data.csv setting=distinguishable test.B=999 progress=false out=DIR/ours.json
    /usr/bin/time -v Rscript DIR/flexmix.R
    /usr/bin/time -v Rscript DIR/mixtools.R

Seconds per refit: a command's wall seconds over its number of fits (ours: the observed fit + B;
flexmix: 2 (B + 1), k = 1 and 2 on each data set; mixtools: 2 (B + 1))."""

import argparse
import math
from pathlib import Path

import numpy as np

FLEXMIX = """suppressMessages(library(flexmix))
set.seed(1)
d <- read.csv("{data}")
m <- flexmix(y ~ ., data = d, k = 1)
t0 <- proc.time()[["elapsed"]]
r <- LR_test(m, R = {B})
cat(sprintf("flexmix LR_test: n = %d, B = %d, p = %.4f, %d bootstrap statistics kept, %.1f s\\n",
            nrow(d), {B}, r$p.value, r$parameter, proc.time()[["elapsed"]] - t0))
"""
MIXTOOLS = """suppressMessages(library(mixtools))
set.seed(1)
d <- read.csv("{data}")
t0 <- proc.time()[["elapsed"]]
r <- boot.comp(d$y, as.matrix(d[, 1:8]), max.comp = 2, B = {B}, mix.type = "regmix", hist = FALSE)
cat(sprintf("mixtools boot.comp: n = %d, B = %d, p = %.4f, %.1f s\\n", nrow(d), {B}, r$p.values[1], proc.time()[["elapsed"]] - t0))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--B", type=int, default=999, help="our bootstrap data sets")
    parser.add_argument("--flexmix-B", type=int, default=20)
    parser.add_argument("--mixtools-B", type=int, default=1)
    parser.add_argument("--dir", default="contamination_benchmark")
    args = parser.parse_args(argv)
    out = Path(args.dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((args.n, 8))
    y = np.tanh(X[:, 0]) + rng.laplace(0, math.sqrt(0.001 / 2), args.n)
    data = out / "data.csv"
    np.savetxt(
        data,
        np.column_stack([X, y]),
        delimiter=",",
        comments="",
        header=",".join([f"x{i}" for i in range(1, 9)] + ["y"]),
    )
    (out / "flexmix.R").write_text(FLEXMIX.format(data=data, B=args.flexmix_B))
    (out / "mixtools.R").write_text(MIXTOOLS.format(data=data, B=args.mixtools_B))
    print(
        f"python -m softmoe_torch.bootstrap_test data={data} setting=distinguishable test.B={args.B} progress=false out={out}/ours.json"
    )
    print(f"Rscript {out}/flexmix.R")
    print(f"Rscript {out}/mixtools.R")


if __name__ == "__main__":
    main()

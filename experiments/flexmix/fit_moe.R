# One EM fit of a softmax-gated Gaussian mixture of linear experts with R's flexmix (FLXMRglm experts,
# FLXPmultinom gate): the field's reference estimator, used as an oracle by tests/test_flexmix.py and
# timed beside softmoe_torch by experiments/sibling/moe_flexmix_benchmark.py.
#
#   Rscript experiments/flexmix/fit_moe.R DATA.csv START.csv OUT.txt [TOL]
#   Rscript experiments/flexmix/fit_moe.R DATA.csv random:K:NREP OUT.txt [TOL]
#
# DATA.csv: columns x1..xd, y. START.csv: n rows of K starting posterior probabilities (the first EM
# step is the M-step from them); random:K:NREP instead: stepFlexmix's NREP random starts of K
# components, the best kept (flexmix's own way to start without one). OUT.txt: name value lines: loglik, iter, seconds (the flexmix call
# alone), then per component k (flexmix's order) intercept_k, slope_k_j, sigma_k, and the gate's
# gate_k_0 (intercept) and gate_k_j (component 1 is flexmix's reference, its gate coefficients 0).
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1])
tol <- if (length(args) >= 4) as.numeric(args[4]) else 1e-10
xs <- setdiff(names(d), "y")
f <- as.formula(paste("y ~", paste(xs, collapse = " + ")))
g <- as.formula(paste("~", paste(xs, collapse = " + ")))
control <- list(tolerance = tol, iter.max = 5000, minprior = 0)
if (startsWith(args[2], "random:")) {
  spec <- as.integer(strsplit(args[2], ":")[[1]][2:3])
  seconds <- system.time(
    m <- stepFlexmix(f, data = d, k = spec[1], nrep = spec[2], model = FLXMRglm(family = "gaussian"),
                     concomitant = FLXPmultinom(g), control = control, verbose = FALSE)
  )[["elapsed"]]
} else {
  post <- as.matrix(read.csv(args[2], header = FALSE))
  seconds <- system.time(
    m <- flexmix(f, data = d, k = ncol(post), cluster = post, model = FLXMRglm(family = "gaussian"),
                 concomitant = FLXPmultinom(g), control = control)
  )[["elapsed"]]
}
p <- parameters(m)
gate <- parameters(m, which = "concomitant")
lines <- c(sprintf("loglik %.12f", as.numeric(logLik(m))), sprintf("iter %d", m@iter),
           sprintf("seconds %.6f", seconds), sprintf("components %d", ncol(p)))
for (k in seq_len(ncol(p))) {
  lines <- c(lines, sprintf("intercept_%d %.12f", k, p[1, k]))
  for (j in seq_along(xs)) lines <- c(lines, sprintf("slope_%d_%d %.12f", k, j, p[1 + j, k]))
  lines <- c(lines, sprintf("sigma_%d %.12f", k, p[nrow(p), k]))
  for (j in 0:length(xs)) lines <- c(lines, sprintf("gate_%d_%d %.12f", k, j, gate[1 + j, k]))
}
writeLines(lines, args[3])

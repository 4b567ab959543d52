# R's flexmix on the course data: K = 2..4, sigma fixed at 1 (a driver of its own, as flexmix
# estimates sigma), stores as groups, stepFlexmix with nrep = 10. Prints each K's log-likelihood.
#   Rscript bench/flexmix_course.R [path/to/609948.csv] [seed]
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE)
path <- if (length(args) >= 1) args[1] else "../shared/data/609948.csv"
set.seed(if (length(args) >= 2) as.integer(args[2]) else 1)
d <- read.csv(path)
T <- nrow(d); N <- ncol(d) - 1
long <- data.frame(logS = log(unlist(d[, -1])), logp = rep(log(d[[1]]), N), store = rep(seq_len(N), each = T))
long <- long[is.finite(long$logS), ]
FLXMRsigma1 <- function(formula = . ~ .) {         # gaussian regression with sigma fixed at 1
  z <- new("FLXMRglm", weighted = TRUE, formula = formula, name = "lm, sigma = 1", family = "gaussian")
  z@defineComponent <- function(para) {
    predict <- function(x, ...) x %*% para$coef
    logLik <- function(x, y, ...) dnorm(y, mean = predict(x, ...), sd = 1, log = TRUE)
    new("FLXcomponent", parameters = list(coef = para$coef), logLik = logLik, predict = predict, df = para$df)
  }
  z@fit <- function(x, y, w, ...) z@defineComponent(list(coef = coef(lm.wfit(x, y, w = w)), df = ncol(x)))
  z
}
fits <- stepFlexmix(logS ~ logp | store, data = long, k = 2:4, nrep = 10, model = FLXMRsigma1(), verbose = FALSE)
for (k in 2:4) cat(sprintf("K = %d: log-likelihood %.4f\n", k, logLik(getModel(fits, as.character(k)))))

# R's flexmix with covariates of membership (FLXPmultinom) on the orange-juice panel: K = 2, 3, 4,
# stores as groups, sigma per segment, log price (and deal, feat), membership on the stores'
# demographics. Prints each K's log-likelihood and time.
#   Rscript bench/flexmix_oj_covariates.R PANEL.csv STORES.csv COVARIATES X NREP [seed]
# COVARIATES: names joined by '+' (educ+ethnic+...); X: none or deal+feat; NREP: stepFlexmix's
# repetitions (10 is its default). Needs Debian's r-base-core and r-cran-flexmix.
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE)
d <- merge(read.csv(args[1]), read.csv(args[2]), by = "store")
covariates <- args[3]
x <- if (args[4] == "none") "" else paste0(" + ", args[4])
nrep <- as.integer(args[5])
set.seed(if (length(args) >= 6) as.integer(args[6]) else 1)
for (name in strsplit(covariates, "+", fixed = TRUE)[[1]]) d[[name]] <- as.numeric(scale(d[[name]]))
model <- as.formula(paste0("log(sales) ~ log(price)", x, " | store"))
concomitant <- FLXPmultinom(as.formula(paste0("~ ", covariates)))
for (k in 2:4) {
  took <- system.time(f <- stepFlexmix(model, data = d, k = k, nrep = nrep, concomitant = concomitant,
                                       verbose = FALSE))[["elapsed"]]
  cat(sprintf("K = %d: got K = %d, log-likelihood %.4f, %.1f s\n", k, f@k, logLik(f), took))
}

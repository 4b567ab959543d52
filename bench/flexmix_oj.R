# R's flexmix on the orange-juice panel: K = 1..5, stores as groups, sigma per segment (flexmix's
# default), its default search (stepFlexmix, nrep = 10). Prints each K's log-likelihood.
#   Rscript bench/flexmix_oj.R [path/to/orange_juice.csv] [seed]
# Needs Debian's r-base-core and r-cran-flexmix (apt-get install r-base-core r-cran-flexmix).
suppressMessages(library(flexmix))
args <- commandArgs(trailingOnly = TRUE)
path <- if (length(args) >= 1) args[1] else "../shared/data/orange_juice.csv"
set.seed(if (length(args) >= 2) as.integer(args[2]) else 1)
d <- read.csv(path)
m <- stepFlexmix(log(sales) ~ log(price) | store, data = d, k = 1:5, nrep = 10, verbose = FALSE)
for (k in 1:5) {
  f <- getModel(m, as.character(k))
  cat(sprintf("K = %d: got K = %d, log-likelihood %.4f\n", k, f@k, logLik(f)))
}

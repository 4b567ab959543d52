"""Covariates of membership on orange juice: for K = 2, 3, 4, sigma per segment, with and without
store effects and the promotions (deal, feat), membership on all eleven store demographics and on
a small set (educ, ethnic, hhlarge, hval150, cpdist5). Prints each fit's log-likelihood, the one
without covariates, the likelihood ratio, the segments the covariates separate and ms a fit;
with --flexmix, R's flexmix (FLXPmultinom, stepFlexmix nrep 10 and --nrep) on the models it can
fit (no store effects: it has no within-store likelihood), with its time.

    python bench/covariates_oj.py                   # seconds
    python bench/covariates_oj.py --flexmix --nrep 50    # minutes; needs Rscript with flexmix
    python bench/covariates_oj.py --gamma           # also each fit's gamma table (the report's)
"""
import argparse
import os
import subprocess
import time
import warnings

import common

ALL = ("age60", "educ", "ethnic", "income", "hhlarge", "workwom", "hval150", "sstrdist", "sstrvol",
       "cpdist5", "cpwvol5")
SMALL = ("educ", "ethnic", "hhlarge", "hval150", "cpdist5")


def flexmix(panel, stores, covariates, x, nrep):
    """{K: (log-likelihood, seconds)} of bench/flexmix_oj_covariates.R."""
    done = subprocess.run(["Rscript", os.path.join(common.BENCH, "flexmix_oj_covariates.R"), panel, stores,
                           "+".join(covariates), "+".join(x) or "none", str(nrep), "1"],
                          capture_output=True, text=True)
    out = {}
    for line in done.stdout.splitlines():
        K, rest = line.split(":", 1)
        out[int(K.split("=")[1])] = (float(rest.split("log-likelihood")[1].split(",")[0]),
                                     float(rest.rsplit(",", 1)[1].split()[0]))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="orange_juice.csv (default: beside the repository)")
    parser.add_argument("--flexmix", action="store_true", help="run R's flexmix beside (minutes)")
    parser.add_argument("--nrep", type=int, default=50, help="flexmix's longer search (default 50)")
    parser.add_argument("--gamma", action="store_true", help="print each fit's gamma table")
    args = parser.parse_args(argv)
    E = common.em_sales()
    panel = common.data_file(common.ORANGE_JUICE, args.data)
    stores = os.path.join(os.path.dirname(panel), "orange_juice_stores.csv")
    rows = []
    for effects in (False, True):
        for x in ((), ("deal", "feat")):
            data = common.tools(E).load(panel, x=list(x))
            for covariates in (ALL, SMALL):
                z = common.tools(E).read_stores(stores, data.stores, covariates)
                stats = E._statistics(data.sums, E._model("segment", effects, covariates), data.coefficients, z)
                theirs = {}
                if args.flexmix and not effects:
                    theirs = {nrep: flexmix(panel, stores, covariates, x, nrep) for nrep in (10, args.nrep)}
                previous = None
                for K in (2, 3, 4):
                    start = time.perf_counter()
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        fit = common.search(E, stats, K, seed=0, previous=previous, names=[data.coefficients[j] for j in stats.columns])
                    took = time.perf_counter() - start
                    previous = fit
                    lr = 2 * (fit.loglik - fit.without_covariates.loglik)
                    flex = "; ".join(f"nrep {nrep}: {values[K][0]:.4f} ({values[K][1]:.1f} s)"
                                     for nrep, values in theirs.items() if K in values)
                    rows.append([("FE" if effects else "-"), "+".join(x) or "-", f"{len(covariates)}", f"{K}",
                                 f"{fit.loglik:.4f}", f"{fit.without_covariates.loglik:.4f}", f"{lr:.2f}",
                                 ",".join(str(c + 1) for c in fit.separated) or "-", f"{1e3 * took:.0f}", flex])
                    if args.gamma:
                        print("\n".join(E._membership_lines(E._model_summary(fit))) + "\n")
    print(common.table(["store effects", "x", "covariates", "K", "log L", "without", "LR", "separated",
                        "ms", "flexmix (FLXPmultinom, stepFlexmix)"], rows))


if __name__ == "__main__":
    main()

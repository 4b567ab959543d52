"""Are the course data's maxima the maxima? For K = 2, 3, 4: many single EM runs from random starts
(half k-means++ starts, half random stores' own coefficients with noise and a random pi), the
best value they find and the share of runs that reach it (within 1e-6); then Estimate with its
defaults for many seeds: its lowest and highest log-likelihood.

    python bench/search.py                      # 1000 runs a K, seeds 0-199: a minute or two
    python bench/search.py --runs 100 --seeds 0-19
    python bench/search.py --K 4 --sigma segment

A single run is one accelerated EM run to a certified maximum (no warm-up batch, no moves).
"""
import argparse
import sys
import warnings

import numpy as np

import common


def sigma_option(text):
    return text if text in ("common", "segment") else float(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--K", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--runs", type=int, default=1000, help="single EM runs a K (default 1000)")
    parser.add_argument("--seeds", default="0-199", help="seeds of Estimate (default 0-199)")
    parser.add_argument("--sigma", type=sigma_option, default=1.0)
    parser.add_argument("--data", help=f"a wide panel (default: {common.COURSE} beside the repository)")
    parser.add_argument("--code", help="another checkout's em_sales.py (default: this one)")
    args = parser.parse_args(common.bare_seeds(sys.argv[1:] if argv is None else argv))
    E = common.em_sales(args.code)
    price, sales, _ = E.read_panel(common.data_file(common.COURSE, args.data))
    y, X = E.panel_arrays(price, sales)
    stats = common.statistics_of(E, y, X, args.sigma)
    b = E._store_coefficients(stats)
    N, P = b.shape
    warnings.simplefilter("ignore")
    rows = []
    for K in args.K:
        rng, draw = np.random.default_rng(777), E._random(777)
        values = []
        for r in range(args.runs):
            if r % 2:
                start = E._first(E._kmeanspp_starts(stats, b, K, draw, 1))
            else:
                start = (b[rng.choice(N, K, replace=False)] + rng.normal(0, 0.3, (K, P)),
                         rng.dirichlet(np.ones(K)), E._start_sigma(stats, K))
            values.append(E._run_em(stats, start, E.TOL, E.MAX_ITER).loglik)
        values = np.array(values)
        estimates = np.array([common.search(E, stats, K, seed=seed).loglik for seed in common.seeds(args.seeds)])
        best = max(values.max(), estimates.max())
        rows.append([K, f"{values.max():.6f}", f"{np.mean(values >= best - 1e-6):.3f}",
                     f"{estimates.min():.6f}", f"{estimates.max():.6f}", f"{np.ptp(estimates):.1e}"])
    print(f"{args.runs} single runs a K; Estimate for seeds {args.seeds}; {E._describe(stats.model)}")
    print(common.table(["K", "best single run", "share at best", "Estimate min", "Estimate max", "spread"], rows))


if __name__ == "__main__":
    main()

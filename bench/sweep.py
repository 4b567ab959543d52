"""Per-K fit times on the course data: a sweep K = 1..10 and 20 as the program runs it (each K
searched with the default n_init = 10 starts and grown from the K before it: _search with
previous=), one line a K: seconds, log-likelihood, the segments the data support, iterations.

    python bench/sweep.py                        # K = 1..10, 20; seed 0; one sweep
    python bench/sweep.py --repeat 5             # median of 5 sweeps, per K
    python bench/sweep.py --K 2 3 4 --repeat 20 --seed 1
    python bench/sweep.py --sigma segment        # or common; --store-effects
    python bench/sweep.py --code /other/checkout/em_sales.py

Times are of the fits alone (the statistics are computed once, before the clock starts). The
log-likelihood must never fall from one K to the next (nested maxima); a line says where it does.
"""
import argparse
import statistics
import time
import warnings

import numpy as np

import common


def sigma_option(text):
    return text if text in ("common", "segment") else float(text)


def sweep(E, stats, Ks, seed, n_init):
    """[(K, seconds, fit)] for one nested sweep."""
    out, previous = [], None
    for K in Ks:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # an empty segment: said below
            start = time.perf_counter()
            fit = common.search(E, stats, K, n_init=n_init, seed=seed, previous=previous)
            took = time.perf_counter() - start
        out.append((K, took, fit))
        previous = fit
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--K", type=int, nargs="+", default=list(range(1, 11)) + [20])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-init", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=1, help="sweeps; each K's time is their median")
    parser.add_argument("--sigma", type=sigma_option, default=1.0, help="1 (default), common or segment")
    parser.add_argument("--store-effects", action="store_true")
    parser.add_argument("--data", help=f"a wide panel (default: {common.COURSE} beside the repository)")
    parser.add_argument("--code", help="another checkout's em_sales.py (default: this one)")
    args = parser.parse_args(argv)
    E = common.em_sales(args.code)
    path = common.data_file(common.COURSE, args.data)
    price, sales, _ = E.read_panel(path)
    y, X = E.panel_arrays(price, sales)
    stats = common.statistics_of(E, y, X, args.sigma, args.store_effects)
    Ks = sorted(set(args.K))
    runs = [sweep(E, stats, Ks, args.seed, args.n_init) for _ in range(args.repeat)]
    rows, total, last = [], 0.0, None
    for j, K in enumerate(Ks):
        seconds = statistics.median(run[j][1] for run in runs)
        fit = runs[0][j][2]
        total += seconds
        fell = last is not None and fit.loglik < last - 1e-9 * abs(last)
        rows.append([K, f"{seconds:.3f}", f"{fit.loglik:.4f}", K - len(E.overfitted(fit)), fit.n_iter,
                     "yes" if fit.converged else "NO", "FELL" if fell else ""])
        last = fit.loglik
    print(f"{path}: {y.shape[1]} stores x {y.shape[0]} weeks; {E._describe(stats.model)}; "
          f"seed {args.seed}, n_init {args.n_init}, median of {args.repeat} sweep(s)")
    print(common.table(["K", "seconds", "loglik", "supported", "iterations", "converged", ""], rows))
    spread = max(np.ptp([run[j][2].loglik for run in runs]) for j in range(len(Ks)))
    print(f"whole sweep {total:.3f} s; largest spread of a K's log-likelihood over the sweeps {spread:.1e}")


if __name__ == "__main__":
    main()

"""The orange-juice panel (Dominick's, long format: 83 stores, 121 weeks, each store its own price):
fits for K = 1..5 with sigma per segment, store effects, and the promotions deal and feat, as
`python em_sales.py orange_juice.csv --K 1 2 3 4 5 --sigma segment --store-effects --x deal feat`
runs them (nested sweep, n_init = 10): per K the time of the fit and its log-likelihood and BIC.

    python bench/oj_sweep.py                       # the model above, seed 0
    python bench/oj_sweep.py --repeat 10           # median time of 10 sweeps
    python bench/oj_sweep.py --seeds 0-19 --reference 100
    python bench/oj_sweep.py --models all --seeds 0-19 --reference 100    # 8 models, minutes

--models all runs the table of models: own price with and without deal and feat, x store effects
or not, x sigma common or per segment. With --seeds A-B every seed's sweep is run: `spread` is the
range of a K's log-likelihood over the seeds, `hits` how many seeds reach the best value found
(within 1e-6), counting the reference search: --reference N adds, for each fit, the best of three
searches with n_init = N (seeds 1000-1002), and `ref - best` is how far it lies above the best
seed (0 or below: no seed fell short of it). Times: the fits alone, ms a fit (median).
"""
import argparse
import math
import statistics
import sys
import time
import warnings

import numpy as np

import common

MODELS = [(x, effects, sigma) for x in ((), ("deal", "feat")) for effects in (False, True)
          for sigma in ("common", "segment")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--K", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--seeds", default="0", help="seeds of the sweeps: 0-19, 3 or 0,2,5 (default 0)")
    parser.add_argument("--repeat", type=int, default=1, help="sweeps a seed, for the median time")
    parser.add_argument("--reference", type=int, default=0, metavar="N",
                        help="also the best of 3 searches with n_init = N for each fit (default: none)")
    parser.add_argument("--models", choices=("one", "all"), default="one")
    parser.add_argument("--data", help=f"the long file (default: {common.ORANGE_JUICE} beside the repository)")
    parser.add_argument("--code", help="another checkout's em_sales.py (default: this one)")
    args = parser.parse_args(common.bare_seeds(sys.argv[1:] if argv is None else argv))
    E = common.em_sales(args.code)
    path = common.data_file(common.ORANGE_JUICE, args.data)
    models = MODELS if args.models == "all" else [(("deal", "feat"), True, "segment")]
    seeds, Ks = common.seeds(args.seeds), sorted(set(args.K))
    loaded = {}
    rows = []
    for x, effects, sigma in models:
        if x not in loaded:
            loaded[x] = common.tools(E).load(path, x=list(x))
        data = loaded[x]
        stats = E._statistics(data.sums, E._model(sigma, effects), data.coefficients)
        names = [data.coefficients[j] for j in stats.columns]
        values = {K: [] for K in Ks}
        times = {K: [] for K in Ks}
        for seed in seeds:
            for repetition in range(args.repeat):
                previous = None
                for K in Ks:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)
                        start = time.perf_counter()
                        fit = common.search(E, stats, K, seed=seed, names=names, previous=previous)
                        times[K].append(time.perf_counter() - start)
                    if repetition == 0:
                        values[K].append(fit.loglik)
                    previous = fit
        label = f"{'+'.join(['price'] + list(x)):15s} {'FE' if effects else '--'} {sigma:7s}"
        for K in Ks:
            lls = np.array(values[K])
            best = lls.max()
            reference = None
            if args.reference:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    reference = max(common.search(E, stats, K, n_init=args.reference, seed=1000 + j).loglik
                                    for j in range(3))
            top = max(best, reference if reference is not None else -math.inf)
            k = K * stats.P + K - 1 + stats.model.mode.count(K)
            bic = k * math.log(stats.n.sum()) - 2 * best
            row = [label, K, f"{best:.4f}", f"{bic:.2f}", f"{1e3 * statistics.median(times[K]):.1f}"]
            if len(seeds) > 1 or reference is not None:
                row += [f"{np.ptp(lls):.1e}", f"{int(np.sum(lls >= top - 1e-6))}/{len(lls)}",
                        "" if reference is None else f"{reference - best:+.1e}"]
            rows.append(row)
        if len(models) > 1:
            print(f"done: {label.strip()}", flush=True)
    headers = ["model", "K", "loglik", "BIC", "ms a fit"]
    if len(seeds) > 1 or args.reference:
        headers += ["spread", "hits", "ref - best"]
    print(f"{path}: seeds {args.seeds}, n_init 10, {args.repeat} sweep(s) a seed; "
          "FE = store effects (within-store likelihood: compare models of the same FE setting only)")
    print(common.table(headers, rows))


if __name__ == "__main__":
    main()

"""The bootstrap test's size and power on panels with a true K and AR(1) errors within stores:
panels drawn with each segment's AR(1) errors over the stores' own weeks (--bootstrap's
simulation where the fit's residuals are autocorrelated) against independent weeks drawn from
the sums (as before). Each panel: 3 segments (elasticities -3, -2, -1), store levels, store
prices, sigma 0.5, AR(1) errors rho; fitted for K = 2, 3, 4 with store effects and one common
sigma (or, --no-store-effects, stores without levels of their own fitted without them). Size: how often K = 3 (true) is rejected for 4 at 5%; power: how often K = 2 is rejected
for 3. Prints a table of rejections by simulation and test.

    python bench/bootstrap_size.py                         # 50 panels, rho 0.5, B = 19 (tens of minutes)
    python bench/bootstrap_size.py --panels 50 --ar 0.8
    python bench/bootstrap_size.py --panels 50 --no-store-effects
"""
import argparse
import time
import warnings

import common
import em_sales as E
from em_sales_tools.analysis import _load
from em_sales_tools.choice import BOOTSTRAP_LEVEL, _bootstrap


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.true_k_options(parser, panels=50)
    parser.add_argument("--B", type=int, default=19)
    parser.add_argument("--kinds", nargs="+", default=["AR(1)", "independent"])
    parser.add_argument("--no-store-effects", action="store_true",
                        help="stores without levels of their own, fitted without store effects")
    args = parser.parse_args()
    rejected = {(kind, K): 0 for kind in args.kinds for K in (2, 3)}
    search = E.Search(n_init=args.n_init, seed=0)
    effects = not args.no_store_effects
    model = E._model(sigma="common", store_effects=effects)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(args.panels):
            with common.true_k_panel(args, seed, store_sd=0.5 if effects else 0.0) as path:
                data = _load(path, None, (), None, None, None)
            stats = E._statistics(data.sums, model, data.coefficients)
            fits = E.sweep(stats, (2, 3, 4), search._replace(seed=seed))
            row = []
            for kind in args.kinds:
                for K in (2, 3):
                    test = _bootstrap(stats, {K: fits[K], K + 1: fits[K + 1]}, args.B, search._replace(seed=seed),
                                      data=data if kind == "AR(1)" else None)["tests"][0]
                    assert test["weeks"] == kind, test
                    rejected[kind, K] += test["p"] <= BOOTSTRAP_LEVEL
                    row.append(f"{kind} {K}v{K + 1} p={test['p']:.2f}")
            print(f"panel {seed}: " + ", ".join(row), flush=True)
    print(f"\n{args.panels} panels of {args.stores} stores x {args.weeks} weeks, true K = 3, AR(1) rho = {args.ar}, "
          f"{'store effects' if effects else 'no store levels or effects'}, common sigma, B = {args.B} ({time.perf_counter() - start:.0f} s):")
    print(common.table(["simulated weeks", "size: rejects K = 3 for 4", "power: rejects K = 2 for 3"],
                       [[kind, f"{rejected[kind, 3]}/{args.panels}", f"{rejected[kind, 2]}/{args.panels}"]
                        for kind in args.kinds]))


if __name__ == "__main__":
    main()

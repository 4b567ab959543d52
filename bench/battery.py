"""The battery: does every seed of the default search reach the maximum? Ten hard simulated panels
(simulate.py), each fitted at K = true - 1, true, true + 1 (K >= 2; 28 fits), under each model:
sigma fixed at 1, one common sigma, one sigma per segment, each with and without store effects.
Per fit: how many of the seeds reach the best log-likelihood found (within 1e-6) over all seeds
and a heavier reference search (the best of three searches with n_init = 100, seeds 1000-1002).

    python bench/battery.py                                  # seeds 0-4, all six models: hours
    python bench/battery.py seeds=0-9 --sigma segment --effects no
    python bench/battery.py seeds=0 --panels close --sigma fixed --effects no --reference 0   # seconds
    python bench/battery.py seeds=0-4 --json new.json
    python bench/battery.py seeds=0-4 --code /old/checkout/em_sales.py --json old.json --against new.json

The panels: close (two close segments), tiny (a 3% segment), outliers (3 outlying stores), short
(100 stores with 1-2 observed weeks), missing30 (30% missing cells), narrow (prices within
3.00-3.60), six (six segments, 10 weeks, 15% missing), big (3,000 stores of 8 weeks), long (60
stores of 104 weeks), five (five overlapping segments). Noise sd 1 where sigma is fixed, 0.5 for a
common sigma, 0.3..1.0 by segment for sigma per segment; with store effects the panels get store
intercepts of sd 1. --against adds the values saved by other runs (--json) to "the best found",
so that two versions are judged against one target. Columns: best (the best found), hits, short
(how far the seeds that miss fall short), ref (the reference's value minus the best seed: above 0,
no seed found it), s a fit (mean over the seeds).
"""
import argparse
import json
import sys
import time
import warnings

import numpy as np

import common
import simulate as S

NOISE = {"fixed": lambda K: 1.0, "common": lambda K: 0.5, "segment": lambda K: tuple(np.linspace(0.3, 1.0, K))}
MODEL_SIGMA = {"fixed": 1.0, "common": "common", "segment": "segment"}
HIT = 1e-6


def draw(K, rng, spread=(9.5, 11.5), slopes=(-2.2, -0.8)):
    return np.column_stack([rng.uniform(*spread, K), rng.uniform(*slopes, K)])


def panels(mode, store_sd=0.0):
    """(name, true K, simulate.Panel) for the ten panels, noise as `mode` says."""
    def sim(*args, K, **named):
        return S.simulate(*args, sigma=NOISE[mode](K), store_sd=store_sd, **named)
    rng = np.random.default_rng(7)
    yield "close", 2, sim(250, 52, [(10.0, -1.2), (10.3, -1.5)], [0.7, 0.3], seed=1, K=2)
    yield "tiny", 3, sim(400, 30, [(10.5, -2.2), (10.0, -1.5), (11.0, -1.0)], [0.03, 0.37, 0.60], seed=2, K=3)
    p = sim(300, 52, seed=3, K=3)
    y = p.y.copy()
    y[:, :3] = (p.X @ np.array([13.0, -3.0]))[:, None] + np.random.default_rng(3).standard_normal((52, 3))
    yield "outliers", 3, p._replace(y=y)
    p = sim(500, 20, seed=4, K=3)
    y = p.y.copy()
    y[2:, :60] = np.nan
    y[1:, 60:100] = np.nan
    yield "short", 3, p._replace(y=y)
    yield "missing30", 4, sim(300, 40, [(10.0, -0.5), (11.0, -1.0), (9.5, -1.8), (12.0, -2.5)], [.3, .2, .25, .25],
                              missing=0.3, seed=5, K=4)
    yield "narrow", 3, sim(300, 52, price_range=(3.0, 3.6), seed=6, K=3)
    yield "six", 6, sim(500, 10, draw(6, rng), rng.dirichlet(np.ones(6) * 2), missing=0.15, seed=7, K=6)
    yield "big", 4, sim(3000, 8, draw(4, rng), rng.dirichlet(np.ones(4) * 2), seed=8, K=4)
    yield "long", 2, sim(60, 104, draw(2, rng), [0.5, 0.5], seed=9, K=2)
    yield "five", 5, sim(1000, 26, draw(5, rng), rng.dirichlet(np.ones(5) * 2), seed=10, K=5)


PANELS = ("close", "tiny", "outliers", "short", "missing30", "narrow", "six", "big", "long", "five")


def best_known(key, fit, row, against):
    """The best log-likelihood known for a fit: this run's seeds and reference, and other runs'."""
    values = list(row["seeds"]) + ([row["reference"]] if row.get("reference") is not None else [])
    for other in against:
        saved = other.get(key, {}).get(fit)
        if saved:
            values += list(saved["seeds"]) + ([saved["reference"]] if saved.get("reference") is not None else [])
    return max(values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0-4", help="seeds of the default search: 0-9, 3 or 0,2,5 (default 0-4); "
                                                       "seeds=0-9 works too")
    parser.add_argument("--sigma", nargs="+", choices=("fixed", "common", "segment"),
                        default=["fixed", "common", "segment"])
    parser.add_argument("--effects", nargs="+", choices=("no", "yes"), default=["no", "yes"],
                        help="without (no) and with (yes) store effects")
    parser.add_argument("--panels", nargs="+", choices=PANELS, default=list(PANELS))
    parser.add_argument("--reference", type=int, default=100, metavar="N",
                        help="n_init of the reference searches (default 100; 0: none)")
    parser.add_argument("--reference-seeds", type=int, default=3, help="reference searches a fit (default 3)")
    parser.add_argument("--code", help="another checkout's em_sales.py (default: this one)")
    parser.add_argument("--json", help="save every log-likelihood to this file")
    parser.add_argument("--against", nargs="+", default=[], metavar="FILE.json",
                        help="other runs' --json files: their values count towards the best found")
    args = parser.parse_args(common.bare_seeds(sys.argv[1:] if argv is None else argv))
    E = common.em_sales(args.code)
    seeds = common.seeds(args.seeds)
    against = [json.load(open(path)) for path in args.against]
    warnings.simplefilter("ignore")
    saved, totals = {}, []
    for mode in args.sigma:
        for effects in args.effects:
            key = f"{mode}{' +FE' if effects == 'yes' else ''}"
            saved[key], rows = {}, []
            for name, true_K, panel in panels(mode, 1.0 if effects == "yes" else 0.0):
                if name not in args.panels:
                    continue
                stats = common.statistics_of(E, panel.y, panel.X, MODEL_SIGMA[mode], effects == "yes")
                for K in (true_K - 1, true_K, true_K + 1):
                    if K < 2:
                        continue
                    start = time.perf_counter()
                    values = [float(common.search(E, stats, K, seed=seed).loglik) for seed in seeds]
                    row = {"seeds": values, "seconds": (time.perf_counter() - start) / len(seeds)}
                    if args.reference:
                        row["reference"] = max(float(common.search(E, stats, K, n_init=args.reference, seed=1000 + j).loglik)
                                               for j in range(args.reference_seeds))
                    fit = f"{name} K={K}"
                    saved[key][fit] = row
                    best = best_known(key, fit, row, against)
                    values = np.array(values)
                    hits = int(np.sum(values >= best - HIT))
                    short = best - values[values < best - HIT]
                    rows.append([fit, f"{best:.4f}", f"{hits}/{len(values)}",
                                 f"{short.min():.3g}-{short.max():.3g}" if len(short) else "",
                                 f"{row['reference'] - values.max():+.1e}" if "reference" in row else "",
                                 f"{row['seconds']:.2f}"])
                    totals.append((key, hits, len(values)))
                    print(f"  {key}: {fit} {hits}/{len(values)}", file=sys.stderr, flush=True)
            print(f"\nsigma {key}: seeds {args.seeds}"
                  + (f", reference: best of {args.reference_seeds} x n_init = {args.reference}" if args.reference else ""))
            print(common.table(["fit", "best", "hits", "short", "ref", "s a fit"], rows))
    print("\ntotal: " + ", ".join(f"{key} {sum(h for k, h, _ in totals if k == key)}/"
                                  f"{sum(n for k, _, n in totals if k == key)}" for key in saved)
          + f"; all {sum(h for _, h, _ in totals)}/{sum(n for _, _, n in totals)} seed-fits")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(saved, out, indent=1)


if __name__ == "__main__":
    main()

"""Nested maxima: sweeps K = 1..(true K + 2) on every battery panel (bench/battery.py) and K = 1..20
on the course data, each K grown from the last as the program does (_search with previous=). The
log-likelihood must never fall from one K to the next; one line a sweep, with its smallest step.

    python bench/nested.py                          # sigma fixed, common, segment; no store effects
    python bench/nested.py --sigma segment --effects yes
    python bench/nested.py --course-only            # the course data alone, K = 1..20

A step counts as a fall where the log-likelihood drops by more than 1e-9 of its size.
"""
import argparse
import time
import warnings

import numpy as np

import battery
import common


def sweep(E, stats, Ks, seed=0):
    values, previous = [], None
    for K in Ks:
        previous = common.search(E, stats, K, seed=seed, previous=previous)
        values.append(previous.loglik)
    return np.array(values)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigma", nargs="+", choices=("fixed", "common", "segment"),
                        default=["fixed", "common", "segment"])
    parser.add_argument("--effects", nargs="+", choices=("no", "yes"), default=["no"])
    parser.add_argument("--course-only", action="store_true")
    parser.add_argument("--course-K", type=int, default=20, help="the course sweep's largest K (default 20)")
    parser.add_argument("--data", help=f"the course file (default: {common.COURSE} beside the repository)")
    parser.add_argument("--code", help="another checkout's em_sales.py (default: this one)")
    args = parser.parse_args(argv)
    E = common.em_sales(args.code)
    warnings.simplefilter("ignore")
    rows, falls, steps = [], 0, 0

    def record(label, Ks, values, seconds):
        nonlocal falls, steps
        drops = np.diff(values)
        fell = int(np.sum(drops < -1e-9 * abs(values[-1])))
        falls, steps = falls + fell, steps + len(drops)
        rows.append([label, f"1..{Ks[-1]}", f"{drops.min():+.3g}", fell, f"{seconds:.1f}"])
        print(f"  {label} done", flush=True)

    if not args.course_only:
        for mode in args.sigma:
            for effects in args.effects:
                for name, true_K, panel in battery.panels(mode, 1.0 if effects == "yes" else 0.0):
                    stats = common.statistics_of(E, panel.y, panel.X, battery.MODEL_SIGMA[mode], effects == "yes")
                    Ks = list(range(1, true_K + 3))
                    start = time.perf_counter()
                    values = sweep(E, stats, Ks)
                    record(f"{mode}{' +FE' if effects == 'yes' else ''} {name}", Ks, values,
                           time.perf_counter() - start)
    price, sales, _ = E.read_panel(common.data_file(common.COURSE, args.data))
    y, X = E.panel_arrays(price, sales)
    Ks = list(range(1, args.course_K + 1))
    start = time.perf_counter()
    values = sweep(E, common.statistics_of(E, y, X), Ks)
    record("course data", Ks, values, time.perf_counter() - start)
    print(common.table(["sweep", "K", "smallest step", "falls", "seconds"], rows))
    if len(values) > 5:
        print(f"course data: K = 6..{Ks[-1]} from {values[5]:.4f} to {values[-1]:.4f}")
    print(f"{len(rows)} sweeps, {steps} steps K -> K + 1, {falls} with a lower log-likelihood")


if __name__ == "__main__":
    main()

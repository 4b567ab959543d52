"""Large panels: Estimate(3, y, X) with the defaults (n_init = 10, seed 0) on simulated panels of
N stores x 52 weeks (simulate.py, the course's model), seconds and microseconds a store; with
--long, the whole command on a long file of N stores with store prices and store intercepts
(`--K 3 --sigma common --store-effects`), written to a temporary folder first.

    python bench/scale.py                            # N = 10,000, 25,000, 50,000, 100,000
    python bench/scale.py --N 10000
    python bench/scale.py --long --N 100000          # a 130 MB file; about a minute, 1-2 GB of memory

Times are of the fit alone (the arrays are built before the clock starts); the long-file time is
wall-clock, start to end, and includes reading the file.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import common
import simulate as S


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--N", type=int, nargs="+", default=[10_000, 25_000, 50_000, 100_000])
    parser.add_argument("--long", action="store_true", help="the whole command on a long file instead")
    parser.add_argument("--code", help="another checkout's em_sales.py (default: this one)")
    args = parser.parse_args(argv)
    rows = []
    if not args.long:
        E = common.em_sales(args.code)
        for N in args.N:
            panel = S.simulate(N=N, seed=1)
            start = time.perf_counter()
            fit = E.Estimate(3, panel.y, panel.X, seed=0)
            took = time.perf_counter() - start
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024     # KB on Linux
            rows.append([f"{N:,}", f"{took:.2f}", f"{1e6 * took / N:.1f}", f"{fit.loglik:.4f}",
                         f"{panel.y.nbytes / 2 ** 20:.0f}", f"{peak:.0f}"])
        print("Estimate(3, y, X, seed=0), stores x 52 weeks")
        print(common.table(["stores", "seconds", "us a store", "loglik", "y MB", "peak RSS MB so far"], rows))
        return
    code = os.path.abspath(args.code) if args.code else os.path.join(common.REPO, "em_sales.py")
    with tempfile.TemporaryDirectory() as folder:
        for N in args.N:
            path = os.path.join(folder, f"long{N}.csv")
            S.main(["--stores", str(N), "--sigma", "0.4", "--store-sd", "1", "--price-sd", "0.1",
                    "--missing", "0.05", "--seed", "3", "--long", "--output", path,
                    "--truth", os.path.join(folder, "truth.json")])
            size = os.path.getsize(path)
            start = time.perf_counter()
            done = subprocess.run([sys.executable, code, path, "--K", "3", "--sigma", "common", "--store-effects",
                                   "--output", os.path.join(folder, "r.json"), "--quiet"],
                                  stderr=subprocess.PIPE, text=True)
            took = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(done.stderr)
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024     # KB on Linux
            rows.append([f"{N:,}", f"{size / 1e6:.1f}", f"{took:.2f}", f"{peak:.0f}"])
            os.remove(path)
    print("python em_sales.py LONG.csv --K 3 --sigma common --store-effects, start to end")
    print(common.table(["stores", "file MB", "seconds", "peak memory MB (largest so far)"], rows))


if __name__ == "__main__":
    main()

"""em_sales beside R's flexmix, whole programs timed in turn (interleaved), with the python + numpy
floor: the orange-juice sweep (K = 1..5, sigma per segment, no store effects: flexmix has no
within-store likelihood) and the course sweep (K = 2..4, sigma fixed at 1).

    python bench/versus_flexmix.py --repeat 5          # needs Rscript with flexmix

Prints each program's median wall-clock time, the ratio, and both programs' log-likelihoods.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import common


def timed(command):
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=common.REPO)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()[-300:]}")
    return time.perf_counter() - start, done.stdout


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    out = os.path.join(tempfile.mkdtemp(), "r.json")
    here = os.path.join(common.REPO, "em_sales.py")
    bench = common.BENCH
    cases = {
        "orange juice": (common.data_file(common.ORANGE_JUICE),
                         ["--K", "1", "2", "3", "4", "5", "--sigma", "segment"], "flexmix_oj.R"),
        "course": (common.data_file(common.COURSE), ["--K", "2", "3", "4"], "flexmix_course.R"),
    }
    for name, (data, options, script) in cases.items():
        ours = [sys.executable, here, data, *options, "--output", out]
        theirs = ["Rscript", os.path.join(bench, script), data, "1"]
        floor = [sys.executable, "-c", "import numpy"]
        times, printed = {"em_sales": [], "flexmix": [], "floor": []}, {}
        for _ in range(args.repeat):
            for key, command in (("em_sales", ours), ("flexmix", theirs), ("floor", floor)):
                seconds, printed[key] = timed(command)
                times[key].append(seconds)
        medians = {key: statistics.median(values) for key, values in times.items()}
        print(f"\n{name}: median of {args.repeat}, s: em_sales {medians['em_sales']:.3f}, flexmix "
              f"{medians['flexmix']:.3f} ({medians['flexmix'] / medians['em_sales']:.1f}x), python + numpy "
              f"{medians['floor']:.3f}")
        print("  flexmix:  " + "; ".join(line.strip() for line in printed["flexmix"].splitlines()))
        print("  em_sales: " + "; ".join(line.split("   free")[0] for line in printed["em_sales"].splitlines()
                                         if line.startswith("K = ")))


if __name__ == "__main__":
    main()

"""The whole command on the course data, start to end: `python em_sales.py 609948.csv`, timed as a
subprocess (Python's start, imports, reading, the K = 2, 3, 4 fits, the report and results.json),
beside the floor every Python program with numpy pays, `python -c "import numpy"`.

    python bench/course_run.py                          # 20 repetitions, median, min and max
    python bench/course_run.py --repeat 5 --data data/609948.csv
    python bench/course_run.py /path/to/other/checkout/em_sales.py    # two versions, interleaved
    python bench/course_run.py --em-args "--K 1 2 3 4 5 --sigma segment" --data ../shared/data/orange_juice.csv

Each repetition runs every command once, in turn (the floor, this checkout's em_sales.py, then
each other em_sales.py given), so that a slow moment of a shared machine falls on all of them.
One untimed run of each comes first. The outputs go to a temporary folder (--output, --quiet):
the repository's results.json is never written. Wall-clock times in ms; compare figures of one
run only.
"""
import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import common


def timed(command, cwd):
    """Wall-clock seconds of one run of `command`; exits where it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {done.returncode}: {done.stderr.strip()}")
    return took


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("others", nargs="*", metavar="OTHER/em_sales.py",
                        help="em_sales.py of other checkouts, timed interleaved with this one")
    parser.add_argument("--repeat", type=int, default=20, help="timed repetitions (default 20)")
    parser.add_argument("--data", help=f"the panel (default: {common.COURSE} beside the repository)")
    parser.add_argument("--em-args", default="", help="further arguments of em_sales.py, one string")
    args = parser.parse_args(argv)
    data = os.path.abspath(common.data_file(common.COURSE, args.data))
    codes = [os.path.join(common.REPO, "em_sales.py")] + [os.path.abspath(path) for path in args.others]
    for code in codes[1:]:
        if not os.path.exists(code):
            raise SystemExit(f"no such file: {code}")
    with tempfile.TemporaryDirectory() as folder:
        commands = {"python + numpy (floor)": [sys.executable, "-c", "import numpy"]}
        for j, code in enumerate(codes):
            name = "this checkout" if j == 0 else f"other {j}: {code}"
            commands[name] = [sys.executable, code, data, *shlex.split(args.em_args),
                              "--output", os.path.join(folder, f"out{j}.json"), "--quiet"]
        for command in commands.values():        # untimed: caches, __pycache__ of imported modules
            timed(command, folder)
        times = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, command in commands.items():
                times[name].append(timed(command, folder))
    floor = statistics.median(times["python + numpy (floor)"])
    rows = []
    for name, values in times.items():
        median = statistics.median(values)
        rows.append([name, f"{1e3 * median:.0f}", f"{1e3 * min(values):.0f}", f"{1e3 * max(values):.0f}",
                     "" if name.startswith("python") else f"{1e3 * (median - floor):.0f}"])
    print(f"{os.path.basename(data)} {args.em_args}".strip() + f": {args.repeat} repetitions, wall-clock ms")
    print(common.table(["command", "median", "min", "max", "median - floor"], rows))
    if len(codes) > 1:
        this = statistics.median(times["this checkout"])
        for name in list(times)[2:]:
            print(f"{name}: {statistics.median(times[name]) / this:.2f} x this checkout's median")


if __name__ == "__main__":
    main()

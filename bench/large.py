"""Large long files: em_sales' reduction (DuckDB) and whole run beside DuckDB's and polars' bare
read-and-sum of the same file, each a subprocess in turn, wall time and peak memory (RSS).

    python bench/large.py FILE.csv [FILE.parquet ...] [--repeat 3]   # a long file: store, week, sales, price
    python bench/large.py --make 100000 big.csv             # write a 100,000-store x 52-week long CSV

polars is optional (skipped where it is not installed). The run is `--K 3 --sigma common
--store-effects`; its outputs go to a temporary folder. With --repeat R the commands run R times,
interleaved (one round of every command, then the next), and the table gives each one's median
wall time, its range, and its largest peak; the ratio is the median over bare DuckDB's.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import common

BARE = {
    "duckdb": ("import duckdb, sys; p = sys.argv[1]; s = (\"read_parquet\" if p.endswith(\".parquet\") else \"read_csv\");"
               " duckdb.sql(f\"SELECT store, count(*), sum(ln(sales)), sum(ln(price)), sum(ln(price) * ln(sales)),"
               " sum(ln(price) * ln(price)), sum(ln(sales) * ln(sales)) FROM {s}('{p}') GROUP BY store\").fetchall()"),
    "polars": ("import polars as pl, sys; p = sys.argv[1]; f = pl.scan_parquet(p) if p.endswith('.parquet') else pl.scan_csv(p);"
               " f.with_columns(y=pl.col('sales').log(), x=pl.col('price').log()).group_by('store').agg(pl.len(),"
               " pl.col('y').sum(), pl.col('x').sum(), (pl.col('x') * pl.col('y')).sum().alias('xy'),"
               " (pl.col('x') ** 2).sum().alias('xx'), (pl.col('y') ** 2).sum().alias('yy')).collect()"),
}


def measured(command):
    """(wall seconds, peak RSS MB) of a command, by /usr/bin/time."""
    with tempfile.NamedTemporaryFile("r") as report:
        done = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", report.name] + command,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if done.returncode:
            return None, done.stderr.strip().splitlines()[-1]
        wall, peak = report.read().split()
    return float(wall), int(peak) / 1024


def make(N, path):
    """A long CSV of N stores x 52 weeks (5% of weeks missing), written by DuckDB."""
    import duckdb
    duckdb.sql(f"""COPY (SELECT 'S' || s AS store, w AS week,
        round(exp(10.5 - (1.0 + (s % 3) * 0.5) * ln(p) + 0.5 * sqrt(-2 * ln(random())) * cos(6.283185 * random())), 4) AS sales,
        p AS price FROM (SELECT s, w, round(1.1 + 6.6 * ((hash(w) % 1000) / 1000.0) * (0.9 + 0.2 * ((hash(s, w) % 100) / 100.0)), 2) AS p
        FROM range({N}) t(s), range(1, 53) u(w) WHERE hash(s, w, 7) % 100 >= 5)) TO '{path}' (HEADER)""")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--make", nargs=2, metavar=("N", "FILE"))
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args(argv)
    if args.make:
        return make(int(args.make[0]), args.make[1])
    code = os.path.join(common.REPO, "em_sales.py")
    out = os.path.join(tempfile.mkdtemp(), "r.json")
    commands = {}
    for path in args.files:
        commands |= {(path, f"bare {name}"): [sys.executable, "-c", script, path] for name, script in BARE.items()}
        commands[path, "em_sales load()"] = [sys.executable, "-c", f"import sys; sys.path.insert(0, {common.REPO!r}); "
                                             "import em_sales_tools; em_sales_tools.load(sys.argv[1])", path]
        commands[path, "em_sales whole run"] = [sys.executable, code, path, "--K", "3", "--sigma", "common",
                                                "--store-effects", "--output", out, "--quiet"]
    runs = {key: [] for key in commands}
    for _ in range(args.repeat):                                  # interleaved: the machine's moods shared
        for key, command in commands.items():
            runs[key].append(measured(command))
    rows = []
    for (path, name), measures in runs.items():
        walls = sorted(wall for wall, _ in measures if wall is not None)
        bare = sorted(wall for wall, _ in runs[path, "bare duckdb"] if wall is not None)
        median = walls[len(walls) // 2] if walls else None
        rows.append([os.path.basename(path), f"{os.path.getsize(path) / 2 ** 20:.0f} MB", name,
                     "failed" if median is None else f"{median:.2f} s",
                     f"{walls[0]:.2f}-{walls[-1]:.2f}" if len(walls) > 1 else "",
                     f"{median / bare[len(bare) // 2]:.2f}x" if median and bare else "",
                     measures[-1][1] if median is None else f"{max(peak for _, peak in measures):.0f} MB"])
    print(common.table(["file", "size", "what", "wall", "range", "/ duckdb", "peak RSS"], rows))


if __name__ == "__main__":
    main()

"""Large long files: em_sales' reduction (DuckDB) and whole run beside DuckDB's and polars' bare
read-and-sum of the same file, each a subprocess in turn, wall time and peak memory (RSS).

    python bench/large.py FILE.csv [FILE.parquet ...]      # a long file: store, week, sales, price
    python bench/large.py --make 100000 big.csv             # write a 100,000-store x 52-week long CSV

polars is optional (skipped where it is not installed). The run is `--K 3 --sigma common
--store-effects`; its outputs go to a temporary folder.
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
    args = parser.parse_args(argv)
    if args.make:
        return make(int(args.make[0]), args.make[1])
    code = os.path.join(common.REPO, "em_sales.py")
    out = os.path.join(tempfile.mkdtemp(), "r.json")
    rows = []
    for path in args.files:
        size = os.path.getsize(path) / 2 ** 20
        commands = {f"bare {name}": [sys.executable, "-c", script, path] for name, script in BARE.items()}
        commands["em_sales load()"] = [sys.executable, "-c", f"import sys; sys.path.insert(0, {common.REPO!r}); "
                                       "import em_sales; em_sales.load(sys.argv[1])", path]
        commands["em_sales whole run"] = [sys.executable, code, path, "--K", "3", "--sigma", "common",
                                          "--store-effects", "--output", out, "--quiet"]
        for name, command in commands.items():
            wall, peak = measured(command)
            rows.append([os.path.basename(path), f"{size:.0f} MB", name,
                         "failed" if wall is None else f"{wall:.1f} s", peak if wall is None else f"{peak:.0f} MB"])
    print(common.table(["file", "size", "what", "wall", "peak RSS"], rows))


if __name__ == "__main__":
    main()

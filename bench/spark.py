"""Spark beside one machine's --by: the same groups fitted by `python em_sales.py FILE --by COL`
(DuckDB's reduction, the machine's cores across groups) and by `python -m em_sales_tools.spark
FILE --by COL --master local[2]`, each a subprocess in turn: wall time, CPU time and peak memory
of the whole process tree (the JVM and the Python workers included, sampled from /proc), and the
largest difference of log-likelihood between the two.

    python bench/spark.py oj                         # the eleven orange-juice brands, K = 1..3
    python bench/spark.py make /tmp/big.parquet      # 2,000 products x 100 stores x 104 weeks
    python bench/spark.py big /tmp/big.parquet       # both on it, and Spark's stages apart
    python bench/spark.py stages /tmp/big.parquet    # Spark only: the reduction, then the fits

`stages` times Spark's reduction (the per-store sums, persisted) apart from the fits
(applyInPandas) in one session, and from them gives rows and groups per core-second and the
time they imply for 50,000 products x 2,000 stores x 104 weeks on 16 workers x 8 cores. Needs
pyspark, pyarrow, duckdb and Java 17; Linux (/proc)."""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from common import REPO, data_file, table

CLOCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
OJ_OPTIONS = ["--K", "1", "2", "3", "--sigma", "segment", "--store-effects", "--x", "deal", "feat"]
BIG_OPTIONS = ["--K", "1", "2", "3", "--sigma", "common"]
CLUSTER = (16, 8)                   # workers x cores of the cluster the estimate is for
NATIONAL = (50_000, 2_000, 104)     # products x stores x weeks of a national chain


def tree(root):
    """{pid: (cpu seconds, rss bytes)} of root and its descendants, from /proc."""
    children, stats = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(pid))
        stats[int(pid)] = ((int(fields[11]) + int(fields[12])) / CLOCK, int(fields[21]) * PAGE)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            out[pid] = stats[pid]
        todo += children.get(pid, [])
    return out


def measured(command):
    """(wall s, cpu s, peak rss GB) of a command's process tree, sampled every 0.2 s."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    cpu, peak, done = {}, [0], threading.Event()

    def sample():
        while not done.wait(0.2):
            now = tree(process.pid)
            for pid, (seconds, _) in now.items():
                cpu[pid] = max(cpu.get(pid, 0), seconds)
            peak[0] = max(peak[0], sum(rss for _, rss in now.values()))
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    _, err = process.communicate()
    done.set()
    watcher.join()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)}: exit {process.returncode}\n{err[-2000:]}")
    return time.perf_counter() - start, sum(cpu.values()), peak[0] / 2 ** 30


def compare(path, by, options):
    """--by and Spark on one file: a table, and the largest difference of log-likelihood."""
    with tempfile.TemporaryDirectory() as folder:
        one, spark = os.path.join(folder, "by.json"), os.path.join(folder, "spark.json")
        rows = []
        for name, command in (("--by (DuckDB, 2 processes)", [sys.executable, "em_sales.py", path, "--by", by]
                               + options + ["--quiet", "--output", one]),
                              ("Spark local[2]", [sys.executable, "-m", "em_sales_tools.spark", path, "--by", by]
                               + options + ["--master", "local[2]", "--quiet", "--output", spark])):
            wall, cpu, rss = measured(command)
            rows.append([name, f"{wall:.1f}", f"{cpu:.1f}", f"{rss:.2f}"])
        a, b = json.load(open(one))["groups"], json.load(open(spark))["groups"]
    worst = max(abs(x["loglik"] - y["loglik"]) for g in a if "models" in a[g]
                for x, y in zip(a[g]["models"], b[g]["models"]))
    print(table(["run", "wall s", "CPU s", "peak RSS GB"], rows))
    print(f"{len(a)} groups; largest |log-likelihood difference| {worst:.2g} (results.json keeps 10 digits)")


def make(path, products, stores, weeks):
    """A Parquet file of products x stores x weeks rows: two segments a product (a store's by a
    hash), store levels, prices varying by store and week."""
    import duckdb
    query = f"""COPY (
        SELECT p AS product, s AS store, w AS week,
               exp(2 + (p % 7) * 0.1 + (s % 5) * 0.05 + beta * ln(price) + 0.4 * (random() - 0.5) * 3.46) AS sales,
               price
        FROM (SELECT p, s, w,
                     CASE WHEN hash(p, s) % 2 = 0 THEN -3.0 ELSE -1.2 END AS beta,
                     1 + 0.3 * random() AS price
              FROM range({products}) r(p), range({stores}) t(s), range({weeks}) u(w))
    ) TO '{path}' (FORMAT parquet)"""
    start = time.perf_counter()
    duckdb.sql("SET threads = 2")
    duckdb.sql(query)
    print(f"{path}: {products * stores * weeks:,} rows, {os.path.getsize(path) / 2 ** 20:.0f} MB, "
          f"{time.perf_counter() - start:.0f} s")


def stages(path, by, options):
    """Spark's reduction and fits timed apart, in one session, and the estimate they imply."""
    sys.path.insert(0, REPO)
    from em_sales_tools import spark
    session = spark.session("local[2]")
    frame = spark._read(session, path)
    rows = frame.count()
    start = time.perf_counter()
    sums, _ = spark.reduced(frame, by, {"store": "store", "week": "week", "sales": "sales", "price": "price"})
    sums = sums.persist()
    groups = sums.select(spark.GROUP).distinct().count()
    reduced = time.perf_counter() - start
    K = tuple(int(k) for k in options[options.index("--K") + 1:options.index("--sigma")])
    job = spark.Job(by, K, spark._model(options[options.index("--sigma") + 1]), spark.Search(), spark.Choice(), (),
                    path)
    start = time.perf_counter()
    fitted = sums.groupBy(spark.GROUP).applyInPandas(lambda part: spark._group(part, job), spark._schema(job)).collect()
    fits = time.perf_counter() - start
    cores = 2
    row_rate, group_rate = rows / (reduced * cores), groups / (fits * cores)
    products, stores, weeks = NATIONAL
    cluster = CLUSTER[0] * CLUSTER[1]
    read = products * stores * weeks / (row_rate * cluster)
    fit = products * (stores / (sums.count() / groups)) / (group_rate * cluster)   # a fit grows with its stores
    print(table(["stage", "wall s", "per core-second"],
                [["reduction (per-store sums)", f"{reduced:.1f}", f"{row_rate:,.0f} rows"],
                 [f"fits ({groups} groups, K = {', '.join(map(str, K))})", f"{fits:.1f}", f"{group_rate:.2f} groups"]]))
    print(f"{sum(1 for row in fitted if row['K'] is None or row['error'])} rows with an error")
    print(f"{products:,} products x {stores:,} stores x {weeks} weeks on {CLUSTER[0]} workers x {CLUSTER[1]} cores, "
          f"at these rates (a group's fit taken to grow in proportion to its stores): reduction {read / 60:.0f} min, "
          f"fits {fit / 60:.0f} min")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("oj", "make", "big", "stages"))
    parser.add_argument("file", nargs="?")
    parser.add_argument("--products", type=int, default=2000)
    parser.add_argument("--stores", type=int, default=100)
    parser.add_argument("--weeks", type=int, default=104)
    args = parser.parse_args()
    if args.what == "oj":
        compare(data_file("orange_juice_brands.csv", args.file), "brand", OJ_OPTIONS)
    elif args.what == "make":
        make(args.file, args.products, args.stores, args.weeks)
    elif args.what == "big":
        compare(args.file, "product", BIG_OPTIONS)
        stages(args.file, "product", BIG_OPTIONS)
    else:
        stages(args.file, "product", BIG_OPTIONS)


if __name__ == "__main__":
    main()

"""Every group of a long panel (every product of a chain) fitted on Spark, from the same per-store
sums as one machine: Spark reduces the rows to per-(group, store) sums in one aggregation, with
the exact reader's checks of each value, and each group is fitted from its stores' sums by
em_sales on the executors (groupBy(by).applyInPandas), as --by fits it on one machine.

    from em_sales_tools.spark import fit_groups, segments_groups
    fits = fit_groups(frame, "product", K=(1, 2, 3), sigma="segment", store_effects=True, x=["deal"])
    fits.filter("best").show()                   # a row a group and K: loglik, bic, theta, ... error

    python -m em_sales_tools.spark rows.parquet --by product --K 1 2 3 [--master URL]
    python em_sales.py rows.csv --by product --engine spark

The executors get em_sales.py and this package from the driver (SparkContext.addPyFile), so a
cluster's workers need only pyspark, numpy and pandas. Spark is imported on this path only."""
import atexit
import json
import os
import shutil
import sys
import tempfile
import warnings
import zipfile
from typing import NamedTuple

import numpy as np

warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")   # it works with pandas 3 ...
warnings.filterwarnings("ignore", category=DeprecationWarning, module="pyspark")         # ... whose own code warns

from em_sales import N_INIT, TOL, VALUE_LIMIT, InputError, Search, _escaped, _model, _shown, _Table, _warn, _whole
from em_sales_tools.analysis import Choice, _analyse_data
from em_sales_tools.engine import _engine_loaded, _with_intercept
from em_sales_tools.files import LONG_COLUMNS, _logged, _long_columns

SESSION = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",      # a session this module starts
           "spark.sql.execution.arrow.pyspark.enabled": "true"}
GROUP = "__group"          # the working names of the group and store labels in Spark's tables
STORE = "__store"
PARTITIONS_PER_CORE = 2  # a session this module starts shuffles into this many partitions a core (Spark's 200
                         # cost seconds a job on a small panel; a cluster's own session keeps its setting)
WEEK_BITS = 512           # a store's weeks proven distinct by their residues modulo this, in WEEK_BITS / 64 words
WORDS = WEEK_BITS // 64   # of bit_or (the engine's bitstring): 512 covers nearly ten years of weeks; a store whose
                          # residues collide beyond that is checked by a second pass over its rows


class Job(NamedTuple):
    """What each group's fit needs on the executors: the group column's name, the Ks, the Model,
    the Search, the Choice, the regressors' names, a label for messages, what to return ("fits",
    "segments" or "results") and, for "segments", the K (None: BIC's)."""
    by: str
    Ks: tuple
    model: object
    search: Search
    choice: Choice
    x: tuple
    label: str
    mode: str = "fits"
    K: int = None


# ---------------------------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------------------------

def fit_groups(frame, by, K=(2, 3, 4), *, store="store", week="week", sales="sales", price="price", x=(),
               sigma=1.0, store_effects=False, n_init=N_INIT, seed=0, tol=TOL):
    """Each group of `by` in a Spark DataFrame of the long panel fitted for every K: a Spark
    DataFrame of a row a group and K, with the `by` column, K, loglik, bic, n_params, best (BIC's
    choice), theta, pi and sigma as JSON text, and error (null; for a group that cannot be
    fitted, its one row says why, and the other groups go on)."""
    job = Job(by, _Ks(K), _model(sigma, store_effects), Search(n_init, seed, tol), Choice(), tuple(x),
              "the DataFrame")
    return _fitted(frame, job, {"store": store, "week": week, "sales": sales, "price": price})


def segments_groups(frame, by, K=(2, 3, 4), *, segments_K=None, store="store", week="week", sales="sales",
                    price="price", x=(), sigma=1.0, store_effects=False, n_init=N_INIT, seed=0, tol=TOL):
    """Each store's segment and posterior probabilities in each group, at segments_K (one of K) or
    BIC's choice: a Spark DataFrame with the `by` column, store, K, segment (1..K), posterior (an
    array) and error (a group that cannot be fitted: one row, its store null)."""
    Ks = _Ks(K)
    if segments_K is not None and segments_K not in Ks:
        raise InputError(f"segments_K = {segments_K} is not among the K estimated ({', '.join(map(str, Ks))})")
    job = Job(by, Ks, _model(sigma, store_effects), Search(n_init, seed, tol), Choice(), tuple(x),
              "the DataFrame", "segments", segments_K)
    return _fitted(frame, job, {"store": store, "week": week, "sales": sales, "price": price})


def analyse_groups(path, Ks, model, search, choice, x=(), columns=None, by=None, master=None, name=None):
    """--by with --engine spark: the file (CSV or Parquet) read by Spark, each group analysed on
    the executors as _analyse_data analyses it on one machine. {"data", "by", "groups": {group:
    results}} (a group that cannot be fitted: {"data", "error"}), as --by's results."""
    if choice.holdout:
        raise InputError("--holdout needs each week of the panel, which --engine spark reduces to sums: run it with "
                         "--by on one machine")
    spark = session(master)
    frame = _read(spark, path)
    label = name or str(path)
    job = Job(by, tuple(Ks), model, search, choice, tuple(x), label, "results")
    names = {role: (columns or {}).get(role) or role for role in LONG_COLUMNS}
    rows = _fitted(frame, job, names).collect()
    groups = {}
    for row in rows:
        group = "" if row[by] is None else row[by]
        groups[group] = json.loads(row["results"])
        for note in groups[group].get("notes", ()):
            _warn(f"{by} = {group}: {note}", UserWarning)
    return {"data": label, "by": by, "groups": dict(sorted(groups.items()))}


def session(master=None, config=None):
    """A Spark session, with em_sales and this package shipped to its executors: the active one, or
    one started on `master` (None: spark-submit's --master, or Spark's default local[*]) with
    SESSION's settings and `config`'s. InputError where pyspark or Java is missing."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise InputError("--engine spark needs pyspark and pyarrow, which are not installed "
                         "(pip install 'em-sales[spark]', or pip install pyspark pyarrow)") from None
    spark = SparkSession.getActiveSession()
    if spark is None:
        if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
            raise InputError("Spark needs Java (17 or later), and none was found: set JAVA_HOME or put java on the PATH")
        builder = SparkSession.builder.appName("em-sales")
        if master:                               # else spark-submit's --master, or Spark's default (local[*])
            builder = builder.master(master)
        java = f"-Dlog4j2.configurationFile={_quiet_logs()}"
        for key, value in {**SESSION, **(config or {})}.items():
            if key == "spark.driver.extraJavaOptions":
                java += " " + value
            else:
                builder = builder.config(key, value)
        builder = builder.config("spark.driver.extraJavaOptions", java)
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel("ERROR")
        spark.conf.set("spark.sql.shuffle.partitions", str(PARTITIONS_PER_CORE * spark.sparkContext.defaultParallelism))
    _ship(spark.sparkContext)
    return spark


def _quiet_logs():
    """A log4j2 configuration that lets through the JVM's errors only (not its start-up chatter)."""
    path = os.path.join(_folder(), "log4j2.properties")
    with open(path, "w") as out:
        out.write("rootLogger.level = error\nrootLogger.appenderRef.stderr.ref = console\n"
                  "appender.console.type = Console\nappender.console.name = console\n"
                  "appender.console.target = SYSTEM_ERR\nappender.console.layout.type = PatternLayout\n"
                  "appender.console.layout.pattern = %p %c: %m%n\n")
    return path


def _folder():
    """A temporary folder for the session's files (the executors fetch them from it while the
    driver runs), removed when the driver's process ends."""
    folder = tempfile.mkdtemp(prefix="em_sales_spark_")
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _ship(context):
    """em_sales.py and a zip of this package, built on the fly, added to the executors' path, once
    for a SparkContext."""
    if getattr(context, "_em_sales_shipped", False):
        return
    import em_sales
    folder = _folder()
    package = os.path.dirname(os.path.abspath(__file__))
    archive = os.path.join(folder, "em_sales_tools.zip")
    with zipfile.ZipFile(archive, "w") as out:
        for name in sorted(os.listdir(package)):
            if name.endswith(".py"):
                out.write(os.path.join(package, name), f"em_sales_tools/{name}")
    context.addPyFile(os.path.abspath(em_sales.__file__))
    context.addPyFile(archive)
    context._em_sales_shipped = True


def _Ks(K):
    """K (a number or numbers of segments) as a tuple of distinct whole numbers."""
    return tuple(dict.fromkeys(_whole(k, "K", 1) for k in ((K,) if isinstance(K, (int, np.integer)) else K)))


def _read(spark, path):
    """A CSV file (header, every column as text: the checks read the numbers), or Parquet: a file
    or folder here, or a URL the cluster reads (s3a://, hdfs://, abfss://, dbfs:/)."""
    text = str(path)
    if ":/" not in text and not os.path.exists(text):
        raise InputError(f"{_escaped(text)}: no such file")
    if text.lower().endswith((".csv", ".csv.gz", ".txt")):
        return spark.read.csv(text, header=True, inferSchema=False)
    return spark.read.parquet(text)


# ---------------------------------------------------------------------------------------------
# The reduction: per-(group, store) sums and checks, in Spark SQL
# ---------------------------------------------------------------------------------------------

def reduced(frame, by, columns, x=()):
    """A Spark DataFrame of rows reduced to per-(group, store) sums with their checks (store_sums),
    persisted (small: a row a store of a group), with each store's first week given twice where
    its weeks are not proven distinct (_repeats) and each group's number of distinct weeks
    (group_weeks); and the columns found (_columns)."""
    sums, found = store_sums(frame, by, columns, x)
    sums = _repeats(sums.persist(), frame, found)
    return _group_weeks(sums, frame, found).drop(*[f"bits_{j}" for j in range(WORDS)]), found


def store_sums(frame, by, columns, x=()):
    """Per (group, store) of a Spark DataFrame of rows, in one aggregation: n, sy, yy, sx_k, xy_k,
    xx_j_k (1 <= j <= k < P: log price, then x; the intercept's follow from n, sy and sx) as the
    DuckDB engine's reduction gives them; price_low and price_high; each regressor's low_k and
    high_k; problem: a faulty row's store, week and fault (a value missing, not a number,
    infinite or too large, not positive where its log is taken; a store or week missing), or
    null; and the weeks as the engine proves them distinct: as integers (numbered: how many are
    written plainly as one, first_week, last_week) with their residues modulo WEEK_BITS as a
    bitstring (bits_0 ..), distinct where the residues are (distinct), without a shuffle of the
    rows by week. Labels are trimmed text; numbers text or numbers."""
    from pyspark.sql import functions as F
    found = _columns(frame, by, columns, x)
    rows = _rows(F, frame, found)
    problems = [(F.col(STORE).isNull(), "the store is missing"), (F.col("week").isNull(), "the week is missing")]
    for j, (shown, positive) in enumerate(found["checks"]):
        value = F.col(f"v{j}")
        problems += [(value.isNull() | F.isnan(value), f"'{shown}' is missing or not a number"),
                     (F.abs(value) > VALUE_LIMIT, f"'{shown}' is infinite or larger than {VALUE_LIMIT:g}")]
        if positive:
            problems.append((value <= 0, f"'{shown}' is not positive (its log is taken)"))
    problem = F.lit(None).cast("string")
    for test, words in reversed(problems):
        problem = F.when(test, F.lit(words)).otherwise(problem)
    number = F.expr("try_cast(week AS BIGINT)")
    rows = rows.withColumn("problem", problem).withColumn("w", F.when(number.cast("string") == F.col("week"), number))
    word = F.expr(f"CAST(pmod(w, {WEEK_BITS}) DIV 64 AS INT)")
    bit = F.expr(f"shiftleft(CAST(1 AS BIGINT), CAST(pmod(w, {WEEK_BITS}) % 64 AS INT))")
    y = F.log(F.col("v0"))
    c = [None, F.log(F.col("v1"))] + [F.log(F.col(f"v{j + 2}")) if logged else F.col(f"v{j + 2}")
                                      for j, logged in enumerate(found["logs"])]
    P = len(c)
    terms = [F.count(F.lit(1)).alias("n"), F.sum(y).alias("sy"), F.sum(y * y).alias("yy")]
    terms += [t for k in range(1, P) for t in (F.sum(c[k]).alias(f"sx_{k}"), F.sum(c[k] * y).alias(f"xy_{k}"))]
    terms += [F.sum(c[j] * c[k]).alias(f"xx_{j}_{k}") for j in range(1, P) for k in range(j, P)]
    terms += [t for k in range(1, P) for t in (F.min(c[k]).alias(f"low_{k}"), F.max(c[k]).alias(f"high_{k}"))]
    terms += [F.min("v1").alias("price_low"), F.max("v1").alias("price_high"),
              F.min_by(F.concat(F.lit("store '"), F.coalesce(F.col(STORE), F.lit("")), F.lit("', week '"),
                                F.coalesce(F.col("week"), F.lit("")), F.lit("': "), F.col("problem")),
                       F.struct(F.col("problem").isNull(), F.col("week"))).alias("problem"),   # a faulty row first
              F.count("w").alias("numbered"), F.min("w").alias("first_week"), F.max("w").alias("last_week")]
    terms += [F.bit_or(F.when(word == j, bit).otherwise(F.lit(0).cast("long"))).alias(f"bits_{j}")
              for j in range(WORDS)]
    sums = rows.groupBy(GROUP, STORE).agg(*terms)
    residues = sum(F.bit_count(F.col(f"bits_{j}")) for j in range(WORDS))
    return sums.withColumn("distinct", (F.col("numbered") == F.col("n")) & (residues == F.col("n"))), found


def _rows(F, frame, found):
    """The frame's rows as the reduction reads them: the group, store and week labels, and the
    numbers v0 (sales), v1 (price), v2 .. (the regressors)."""
    return frame.select(_label(F, found["by"]).alias(GROUP), _label(F, found["store"]).alias(STORE),
                        _label(F, found["week"]).alias("week"),
                        *[_number(F, frame, name).alias(f"v{j}") for j, name in enumerate(found["numbers"])])


def _group_weeks(sums, frame, found):
    """Each group's number of distinct weeks (group_weeks): from its stores' bitstrings where every
    week is an integer and the group's span is under WEEK_BITS, else by a count of the distinct
    weeks of those groups' rows (a second pass, over them only)."""
    from pyspark.sql import functions as F
    words = [F.bit_or(F.col(f"bits_{j}")).alias(f"bits_{j}") for j in range(WORDS)]
    groups = sums.groupBy(GROUP).agg(F.min(F.col("numbered") == F.col("n")).alias("numbered"),
                                     (F.max("last_week") - F.min("first_week")).alias("span"), *words)
    counted = sum(F.bit_count(F.col(f"bits_{j}")) for j in range(WORDS))
    groups = groups.select(GROUP, F.when(F.col("numbered") & (F.col("span") < WEEK_BITS), counted)
                           .cast("long").alias("group_weeks"))
    if groups.where(F.col("group_weeks").isNull()).take(1):
        undecided = groups.where(F.col("group_weeks").isNull()).select(GROUP)
        rows = _rows(F, frame, found).select(GROUP, "week").join(undecided, GROUP, "left_semi")
        distinct = rows.where(F.col("week").isNotNull()).distinct().groupBy(GROUP) \
            .agg(F.count(F.lit(1)).alias("distinct_weeks"))
        groups = groups.join(distinct, GROUP, "left") \
            .select(GROUP, F.coalesce("group_weeks", "distinct_weeks").alias("group_weeks"))
    return sums.join(groups, GROUP, "left")


def _label(F, name):
    """A label column as trimmed text; null where empty or missing."""
    text = F.trim(F.col(f"`{name}`").cast("string"))
    return F.when(text == "", F.lit(None)).otherwise(text)


def _number(F, frame, name):
    """A number column as a double: text read by try_cast (a cell that is not a number is null)."""
    kind = dict(frame.dtypes)[name]
    if kind == "string":
        return F.expr(f"try_cast(trim(`{name.replace('`', '``')}`) AS DOUBLE)")
    return F.col(f"`{name}`").cast("double")


def _columns(frame, by, columns, x):
    """The frame's columns: "by", "store", "week", and "numbers" (sales, price, then each
    regressor's column), "checks" [(name shown, positive)], "logs" [a regressor is log(COL)]: the
    exact reader's choice of columns (files._long_columns) and messages."""
    header = list(frame.columns)
    table = _Table("the DataFrame", ",", header, 1, iter(()))
    where = _long_columns(table, {role: name for role, name in columns.items() if name and name != role}, x)
    lower = [name.lower() for name in header]
    if by not in header and lower.count(by.lower()) != 1:
        raise InputError(f"the DataFrame: no column '{_shown(by)}' (--by) in the header")
    numbers = [header[where["sales"]], header[where["price"]]] + [header[j] for j in where["x"]]
    logs = [_logged(name) is not None for name in x]
    return {"by": by if by in header else header[lower.index(by.lower())], "store": header[where["store"]],
            "week": header[where["week"]], "numbers": numbers, "logs": logs,
            "checks": [(numbers[0], True), (numbers[1], True)] + list(zip(numbers[2:], logs))}


def _repeats(sums, frame, found):
    """The first week given twice, for each (group, store) whose weeks the bitstrings do not prove
    distinct (a second pass over those stores' rows only): problem filled in there."""
    from pyspark.sql import functions as F
    unproven = sums.where(~F.col("distinct") & F.col("problem").isNull()).select(GROUP, STORE)
    if not unproven.take(1):
        return sums
    rows = _rows(F, frame, found).select(GROUP, STORE, "week").join(unproven, [GROUP, STORE], "left_semi")
    twice = rows.groupBy(GROUP, STORE, "week").count().where(F.col("count") > 1).groupBy(GROUP, STORE) \
        .agg(F.min("week").alias("twice"))
    text = F.concat(F.lit("store '"), F.col(STORE), F.lit("', week '"), F.col("twice"), F.lit("': given twice"))
    return sums.join(twice, [GROUP, STORE], "left") \
        .withColumn("problem", F.coalesce(F.col("problem"), F.when(F.col("twice").isNotNull(), text))).drop("twice")


# ---------------------------------------------------------------------------------------------
# Each group's fit, on the executors
# ---------------------------------------------------------------------------------------------

def _fitted(frame, job, columns):
    """The groups' answers as a Spark DataFrame (_schema of job.mode)."""
    sums, _ = reduced(frame, job.by, columns, job.x)
    return sums.groupBy(GROUP).applyInPandas(lambda part: _group(part, job), _schema(job))


def _schema(job):
    by = "`" + job.by.replace("`", "``") + "`"
    if job.mode == "segments":
        return f"{by} string, store string, K int, segment int, posterior array<double>, error string"
    if job.mode == "results":
        return f"{by} string, results string"
    return (f"{by} string, K int, loglik double, bic double, n_params int, best boolean, theta string, pi string, "
            "sigma string, error string")


def _group(part, job):
    """One group's rows of _schema(job) from its stores' sums (a pandas DataFrame): the group's
    analysis as --by's (_analyse_data), or its error, never a failed job. A failure of the
    program is said as one ("internal error"), not as a fault of the data."""
    import pandas as pd
    group = part[GROUP].iloc[0]
    label = f"{job.label} [{job.by} = {group}]"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            try:
                found = _analyse_data(_loaded(part, job), job.Ks, job.model, job.search, job.choice, None, label)
                error = None
            except InputError as problem:
                error = str(problem)
            except Exception as problem:         # the program's failure, said as one; the other groups go on
                error = f"{label}: internal error ({type(problem).__name__}: {problem}): please report it"
    if job.mode == "results":
        results = {"data": label, "error": error} if error else found.results
        return pd.DataFrame({job.by: [group], "results": [json.dumps(results, default=_plain)]})
    if error:
        empty = {"segments": {"store": [None], "K": [None], "segment": [None], "posterior": [None]},
                 "fits": {"K": [None], "loglik": [None], "bic": [None], "n_params": [None], "best": [None],
                          "theta": [None], "pi": [None], "sigma": [None]}}[job.mode]
        return pd.DataFrame({job.by: [group], **empty, "error": [error]})
    best = found.results["best_K"]
    if job.mode == "segments":
        fit = found.fits[job.K or best]
        return pd.DataFrame({job.by: group, "store": [str(s) for s in found.data.stores], "K": fit.K,
                             "segment": fit.W.argmax(axis=1) + 1, "posterior": list(fit.W), "error": None})
    models = found.results["models"]
    return pd.DataFrame({job.by: group, "K": [m["K"] for m in models], "loglik": [m["loglik"] for m in models],
                         "bic": [m["bic"] for m in models], "n_params": [m["n_params"] for m in models],
                         "best": [m["K"] == best for m in models],
                         "theta": [json.dumps(m["theta"], default=_plain) for m in models],
                         "pi": [json.dumps(m["pi"], default=_plain) for m in models],
                         "sigma": [json.dumps(m["sigma"], default=_plain) for m in models], "error": None})


def _loaded(part, job):
    """The group's Loaded from its stores' sums, as the DuckDB engine builds it; InputError for
    the group's first faulty row, a missing group, or a regressor that never changes in it."""
    group = part[GROUP].iloc[0]
    if group is None:
        raise InputError(f"{job.label}: rows whose {job.by} is missing ({part[STORE].iloc[0]!s} among their stores)")
    bad = part["problem"].dropna()
    if len(bad):
        raise InputError(f"{job.label}: {job.by} '{group}', {sorted(bad)[0]}")
    part = part.sort_values(STORE, kind="stable")
    P = 2 + len(job.x)
    names = ["log price"] + list(job.x)
    for k in range(1, P):
        if part[f"low_{k}"].min() == part[f"high_{k}"].max():
            raise InputError(f"{job.label}: '{names[k - 1]}' has the same value in every row of {job.by} '{group}'; "
                             "a regressor that never changes cannot be estimated")
    table = {key: part[key].to_numpy() for key in part.columns if key not in (GROUP, STORE, "problem", "distinct")}
    table["store"] = part[STORE].to_numpy(dtype=object)
    return _engine_loaded(_with_intercept(table, P), None, {0: int(part["group_weeks"].iloc[0])}, P, list(job.x), 0, None)


def _plain(value):
    """json.dumps' default for numpy's numbers and arrays."""
    return value.tolist() if hasattr(value, "tolist") else str(value)


# ---------------------------------------------------------------------------------------------
# python -m em_sales_tools.spark FILE --by COL [options] [--master URL]
# ---------------------------------------------------------------------------------------------

def main(argv=None):
    """The package's command line with --engine spark: each group of --by fitted on Spark."""
    from em_sales_tools import cli
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.main(argv + ["--engine", "spark"])


if __name__ == "__main__":                       # python -m em_sales_tools.spark, or spark-submit of this file:
    from em_sales_tools.spark import main as _main   # the module's own functions, which the executors import
    sys.exit(_main())

"""Large long files and Parquet files reduced to per-store sums by DuckDB, out of core, in one pass
(_store_query): the sums, each number's count and extremes (the exact reader's checks), the
weeks as integers with their residues as a bitstring (a store whose residues are distinct has no
week twice) and a hashed sample of stores for the lags; a second pass only where the first
cannot decide. DuckDB is imported on this path only."""
import os
import tempfile
import threading

import numpy as np

from em_sales import VALUE_LIMIT, InputError, Sums, _Table, _escaped, _shown, _table
from em_sales_tools.files import (ENGINE_FROM, HEAD_BYTES, Lags, Loaded, _is_parquet, _logged, _long_columns,
                                  _sql_text, read_long)

ENGINE_MEMORY = "512MB"    # DuckDB's memory limit while it reduces a file; beyond it, it spills to disk
REREAD_UP_TO = 256 << 20  # a fault the engine finds in a CSV file up to this size is located by the exact
                           # reader (line and column; it takes about ten times the file); above it, by store and week
WEEK_BITS = 2048         # the engine proves a store's weeks distinct by their residues modulo this (a power of 2)
LAG_ROWS = 100_000       # the residual autocorrelation of a file the engine reads: from a sample of stores of
                         # this many rows or more (every store, in a file of fewer than twice as many)
WHITE_SPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006"
               "\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")  # what str.strip() takes off a label
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
                 "UBIGINT", "UHUGEINT")   # a Parquet file's week column of these types holds integer weeks
CSV_BUFFER = 8 << 20      # bytes DuckDB reads of a CSV file at a time (a longer line than this is refused)
PROGRESS_BELOW = 99.0     # the pass's progress in percent is shown below this until the pass has ended
NUMBER_TYPES = INTEGER_TYPES + ("FLOAT", "DOUBLE", "DECIMAL")  # numbers of these types are numbers (others: text)


def _engine_load(path, columns, x, folds=None, by=None, progress=None):
    """_engine_reduce, with the engine's own failures (out of memory or disk, a file it cannot
    parse) as one-line InputErrors; None for a CSV file in which DuckDB finds a fault and the
    exact reader none (load then reads it exactly)."""
    try:
        import duckdb
    except ImportError:
        raise InputError(f"{_escaped(path)}: a long file above {ENGINE_FROM >> 20} MB, and any Parquet file, is "
                         "read by DuckDB, which is not installed (pip install duckdb)") from None
    try:
        with tempfile.TemporaryDirectory(prefix="em_sales_") as folder:     # the engine's database and spill
            return _engine_reduce(path, columns, x, folds, by, folder, progress)
    except _ExactlyRead:
        return None
    except (duckdb.InternalException, duckdb.FatalException):
        raise                                    # DuckDB's own failure, not the file's: a program error (exit 3)
    except duckdb.Error as problem:
        first = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
        raise InputError(f"{_escaped(path)}: DuckDB could not reduce it: {first}") from None


def _engine_reduce(path, columns, x, folds, by, folder, progress=None):
    """A Loaded of a long CSV or Parquet file, reduced to per-store sums by DuckDB's GROUP BY in
    one pass over the file (_store_query), within ENGINE_MEMORY (it spills to disk beyond it),
    whatever the file's size. The same pass flags a missing, non-numeric or non-positive value,
    proves a store's weeks distinct where it can and samples stores for the lags. The first pass
    reads numbers as numbers and labels as written; where DuckDB refuses a cell, or a label has
    spaces to trim, a careful pass reads numbers as text and trims labels. by: a column whose
    groups (products, brands) are reduced in the same pass: {group: Loaded}. progress(percent):
    DuckDB's estimate of the pass's progress, every second."""
    import duckdb
    logs = _logs(x)
    names = ["1", "ln(price)"] + [f"ln(x{j})" if j in logs else f"x{j}" for j in range(len(x))]
    connection, where = _engine_connection(path, columns, x, by, folder)
    with connection:                             # closed however it ends
        every = max(1, int(_engine_rows(connection, path) // LAG_ROWS))
        for careful in (False, True):
            source = _engine_source(path, where, by, careful)
            try:
                _watched(connection, "CREATE OR REPLACE TEMP TABLE stores AS "
                         + _store_query(source, len(x), folds, by, every, where["integer_weeks"], logs), progress)
            except duckdb.Error:
                if careful:
                    _exact_or(path, columns, x, by)
                    raise
                continue
            table = connection.execute("SELECT * EXCLUDE (week_bits, sample) FROM stores ORDER BY "
                                       f"{'grp, ' if by else ''}store").fetchnumpy()
            labels = table["store"].tolist() + (table["grp"].tolist() if by else [])
            if careful or not _untrimmed(labels):
                break
        weeks = _engine_checks(connection, source, where, path, columns, x, by, labels)
        sample = f"(SELECT {'grp, ' if by else ''}store, unnest(sample, recursive := true) FROM stores WHERE sample IS NOT NULL)"
        lags = _watched(connection, _lag_query(sample, len(names), names, by)).fetchnumpy()
    return _engine_loaded(_with_intercept(table, len(names)), lags, weeks, len(names), x,
                          folds.count if folds else 0, by)


def _with_intercept(table, P):
    """A table of per-store sums of the regressors but the intercept (columns n, sy, sx_k, xy_k,
    xx_j_k for 1 <= j <= k < P) with the intercept's sums too: n, sy and the others' totals.
    Spark's reduction (em_sales_tools.spark) gives the same table."""
    table["xx_0_0"] = table["sx_0"] = table["n"]
    table["xy_0"] = table["sy"]
    for k in range(1, P):
        table[f"xx_0_{k}"] = table[f"sx_{k}"]
    return table


def _watched(connection, query, progress=None, every=1.0):
    """connection.execute(query), run in a worker thread while this one waits, so that Ctrl-C and
    SIGTERM reach the run at once: the query is interrupted and the engine's folder removed.
    With progress(percent), DuckDB's own estimate every `every` seconds (its progress bar, not
    printed), doubled and kept below 100: DuckDB counts the pass's two pipelines as halves, and
    the first (reading the file into the grouping) is all but the whole time."""
    if progress is not None:
        connection.execute("SET enable_progress_bar = true")
        connection.execute("SET enable_progress_bar_print = false")
    outcome, finished = {}, threading.Event()    # an Event, not join(): a join cut short by a signal can
                                                    # return early later, while the query still runs

    def work():
        try:
            outcome["result"] = connection.execute(query)
        except BaseException as problem:         # handed to the waiting thread
            outcome["error"] = problem
        finally:
            finished.set()
    threading.Thread(target=work, daemon=True).start()
    try:
        while not finished.wait(every):          # a signal's handler runs here, in the main thread
            if progress is not None:
                share = connection.query_progress()
                if share >= 0:
                    progress(min(PROGRESS_BELOW, 2 * share))
    except BaseException:
        connection.interrupt()
        finished.wait()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _engine_connection(path, columns, x, by, folder):
    """(a DuckDB connection whose database and spill files are in folder, the file's layout):
    the layout is {role: column index} for store, week, sales, price, x and by, with the header,
    separator, lines before the header (skip), column names by role (names), the columns of
    numbers (numbers), whether a Parquet
    file's weeks are integers, and its columns to read as text (text: numbers of a type that is
    not a number's, labels of a type other than integers and text)."""
    import duckdb
    if not os.path.isfile(path):
        raise InputError(f"{_escaped(path)}: no such file")
    connection = duckdb.connect(os.path.join(folder, "panel.duckdb"),          # on disk: tables larger than memory
                                config={"memory_limit": ENGINE_MEMORY, "threads": os.cpu_count() or 1,
                                        "preserve_insertion_order": False,     # lets every step stream and spill
                                        "temp_directory": os.path.join(folder, "spill")})
    connection.execute("SET enable_progress_bar = false")          # printed into the report: _watched reads it
    if _is_parquet(path):
        described = connection.execute(f"DESCRIBE SELECT * FROM read_parquet({_sql_text(path)})").fetchall()
        header, kinds, sep, skip = [row[0] for row in described], [row[1] for row in described], ",", 0
    else:
        with open(path, "rb") as handle:
            head = handle.read(HEAD_BYTES).decode("utf-8-sig", errors="replace")
        table = _table(path, head.rsplit("\n", 1)[0] + "\n")
        header, sep, skip = table.header, table.sep, table.header_line - 1
        kinds = ["VARCHAR"] * len(header)
    where = _long_columns(_Table(_escaped(path), sep, header, 1, iter(())), columns, x)
    if by is not None and by not in header:
        raise InputError(f"{_escaped(path)}: no column '{_shown(by)}' (--by) in the header")
    numbers = {where["sales"], where["price"], *where["x"]}
    names = {role: header[where[role]] for role in ("store", "week", "sales", "price")}
    names |= {f"x{k}": header[j] for k, j in enumerate(where["x"])}
    text = {j for j, kind in enumerate(kinds) if _is_parquet(path)
            and not kind.startswith(NUMBER_TYPES if j in numbers else INTEGER_TYPES + ("VARCHAR",))}
    return connection, where | {"header": header, "sep": sep, "skip": skip, "names": names, "text": text,
                                "numbers": numbers,
                                "by": None if by is None else header.index(by),
                                "integer_weeks": kinds[where["week"]] in INTEGER_TYPES}


def _engine_rows(connection, path):
    """The file's number of rows: from a Parquet file's metadata, or a CSV file's size over its
    first lines' mean length (it sets the lags' sample: LAG_ROWS)."""
    if _is_parquet(path):
        return connection.execute(f"SELECT sum(num_rows) FROM parquet_file_metadata({_sql_text(path)})").fetchone()[0] or 0
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    return os.path.getsize(path) * max(head.count(b"\n"), 1) / max(len(head), 1)


def _engine_source(path, where, by, careful):
    """The file as a subquery with columns store, week, sales, price, x0.. (and grp). Parquet
    keeps its types: integer and text labels keep theirs (_store_query writes them as text),
    others are text from the start (DuckDB groups -0.0 with 0.0). A CSV file's
    numbers are read as numbers (DuckDB refuses a cell that is not one); carefully, as text by
    TRY_CAST (a cell that is not a number becomes NULL, flagged), and its labels as text
    trimmed, as the exact reader trims them."""
    header, sep, literal, numbers = where["header"], where["sep"], _sql_text(path), where["numbers"]
    if _is_parquet(path):
        scan, text = f"read_parquet({literal})", False
    else:
        kinds = ", ".join(f"'c{j}': '{'VARCHAR' if careful or j not in numbers else 'DOUBLE'}'" for j in range(len(header)))
        scan, text = (f"read_csv({literal}, header = true, skip = {where['skip']}, delim = '{sep}', quote = '\"', "
                      f"escape = '\"', auto_detect = false, buffer_size = {CSV_BUFFER}, columns = {{{kinds}}})"), careful

    def column(j):                               # a CSV file's columns by position, whatever its header says
        name = '"' + header[j].replace('"', '""') + '"' if _is_parquet(path) else f"c{j}"
        if j not in numbers:                     # a label
            if careful:
                return _trim(f"CAST({name} AS VARCHAR)")
            return f"CAST({name} AS VARCHAR)" if j in where["text"] else name
        if not text and j not in where["text"]:
            return f"CAST({name} AS DOUBLE)"
        cell = f"trim(CAST({name} AS VARCHAR))"
        return f"TRY_CAST({cell if sep == ',' else f'replace({cell}, {chr(39)},{chr(39)}, {chr(39)}.{chr(39)})'} AS DOUBLE)"
    fields = [f"{column(where[role])} AS {role}" for role in ("store", "week", "sales", "price")]
    fields += [f"{column(j)} AS x{k}" for k, j in enumerate(where["x"])]
    if by is not None:
        fields.append(f"{column(where['by'])} AS grp")
    return f"(SELECT {', '.join(fields)} FROM {scan})"


def _untrimmed(labels):
    """True where a store (or group) label of the pass has white space around it: the careful pass
    trims it."""
    return any(label is not None and label != label.strip() for label in labels)


def _label(name):
    """SQL: a label of the source as text (a Parquet file's numbers too)."""
    return f"CAST({name} AS VARCHAR)"


def _shown_label(label):
    """A label the engine found, for a message: NULL as empty."""
    return "" if label is None else _shown(str(label))


def _trim(name):
    """SQL: a label without the white space around it, as Python's str.strip() takes it off."""
    return f"trim({name}, '{WHITE_SPACE}')"


def _numbers(Q):
    """The source's number columns: sales, price and the regressors x0.. x{Q-1}."""
    return ["sales", "price"] + [f"x{j}" for j in range(Q)]


def _logs(x):
    """The regressors of x written log(COL), by their place: the engine takes their logarithm."""
    return tuple(j for j, name in enumerate(x) if _logged(name))


def _positive(Q, logs=()):
    """The number columns whose log is taken: sales, price, and the regressors written log(COL)."""
    return ["sales", "price"] + [f"x{j}" for j in logs]


def _engine_tests(Q, by=None, logs=()):
    """[(the SQL test of a faulty row, the column it names, what it says)], in the exact reader's
    order: where the pass's extremes show a fault, the first test that finds a row names it."""
    numbers = _numbers(Q)
    tests = [(f"{name} IS NULL", name, "is missing or not a number") for name in numbers]
    tests += [(f"NOT isfinite({name}) OR abs({name}) > {VALUE_LIMIT:g}", name,
               f"is infinite or larger than {VALUE_LIMIT:g}") for name in numbers]
    tests += [(f"{name} <= 0", name, "is not positive (its log is taken)") for name in _positive(Q, logs)]
    return tests + [(f"{name} IS NULL OR {_trim(_label(name))} = ''", name, "is missing")
                    for name in ("store", "week") + (("grp",) if by else ())]


def _store_query(source, Q, folds, by, every, integer_weeks=False, logs=()):
    """The one pass: per store (and group, and fold) the sums of Sums without the intercept's
    (n, sy and sx give them); each number's count and extremes (_engine_checks); the weeks as
    integers: their count, range, whether each is written plainly, and their residues modulo
    WEEK_BITS as a bitstring (_engine_repeats, _engine_weeks); and, for one store in `every` (by
    a hash of its label), its rows as a list: the lags' sample."""
    P, labels = Q + 2, (["grp"] if by else []) + ["store"]
    keys, blocks = list(labels), ""
    if folds and folds.blocks:                   # a store's weeks in time order, cut into contiguous blocks
        place = f"ORDER BY TRY_CAST({_label('week')} AS DOUBLE), {_label('week')}"
        blocks = (f", row_number() OVER (PARTITION BY {', '.join(labels)} {place}) - 1 AS week_rank, "
                  f"count(*) OVER (PARTITION BY {', '.join(labels)}) AS store_rows")
        keys.append(f"({int(folds.count)} * week_rank) // store_rows AS fold")
    elif folds:
        keys.append(f"(hash({_label('store')}, {_label('week')}, {int(folds.seed)}) % {int(folds.count)}) AS fold")
    regressors = ["ln(price) AS c1"] + [f"{f'ln(x{j})' if j in logs else f'x{j}'} AS c{j + 2}" for j in range(Q)]
    rows = f"SELECT *, ln(sales) AS y, {', '.join(regressors)}, TRY_CAST(week AS BIGINT) AS w{blocks} FROM {source}"
    terms = ["count(*) AS n", "sum(y) AS sy", "sum(y * y) AS yy"]
    terms += [f"sum(c{j}) AS sx_{j}, sum(c{j} * y) AS xy_{j}" for j in range(1, P)]
    terms += [f"sum(c{j} * c{k}) AS xx_{j}_{k}" for j in range(1, P) for k in range(j, P)]
    terms += [f"count({name}) AS {name}_count, min({name}) AS {name}_low, max({name}) AS {name}_high"
              for name in _numbers(Q)]
    terms += ["count(w) AS numbered", "min(w) AS first_week", "max(w) AS last_week",
              "true AS plain" if integer_weeks else f"bool_and(CAST(w AS VARCHAR) = {_label('week')}) AS plain",
              f"bitstring_agg(w & {WEEK_BITS - 1}, 0, {WEEK_BITS - 1}) AS week_bits"]
    fields = ", ".join(f"{name} := {name}" for name in ["week"] + _numbers(Q))
    terms.append(f"list(struct_pack({fields})) FILTER (WHERE hash(store) % {int(every)} = 0) AS sample")
    return (f"SELECT {', '.join(f'CAST({key} AS VARCHAR) AS {key}' for key in labels)}, * EXCLUDE ({', '.join(labels)}) "
            f"FROM (SELECT {', '.join(keys + terms)} FROM ({rows}) GROUP BY ALL)")


def _engine_checks(connection, source, where, path, columns, x, by, labels):
    """The exact reader's checks, from the pass's summary (_engine_summary): a missing,
    non-numeric, infinite, too large or non-positive value, a missing store or group (labels:
    the pass's), a price or regressor that never changes (in a group, with by), a store and week
    given twice or a missing week (_engine_repeats). A CSV file up to REREAD_UP_TO is then read
    by the exact reader, whose InputError names the line and column; otherwise a second pass
    finds the store and week. Returns {group: the number of distinct weeks} (_engine_weeks)."""
    shown, summary = _escaped(path), _engine_summary(connection, len(x), by, _logs(x))
    if not labels:
        raise InputError(f"{shown}: has a header but no data rows")
    if not all(label and label.strip() for label in labels) or not all(row[1] for row in summary):
        _exact_or(path, columns, x, by)
        for test, name, words in _engine_tests(len(x), by, _logs(x)):
            found = _watched(connection, f"SELECT store, {_trim(_label('week'))} FROM {source} WHERE {test} LIMIT 1").fetchone()
            if found:
                what = f"the {by}" if name == "grp" else f"the {name}" if name in ("store", "week") else \
                    f"'{_shown(where['names'][name])}'"
                store, week = map(_shown_label, found)
                raise InputError(f"{shown}: store '{store}', week '{week}': {what} {words}")
    for group, _, _, _, *flat in summary:
        for name, same in zip(_numbers(len(x))[1:], flat):
            if same:
                raise InputError(f"{shown}: column '{_shown(where['names'][name])}' has the same value in every row"
                                 + (f" of {by} '{_shown(str(group))}'" if by else "") + "; a regressor that never "
                                 "changes cannot be estimated")
    if not all(row[2] for row in summary):
        _engine_repeats(connection, source, path, columns, x, by)
    return _engine_weeks(connection, source, by, {row[0]: row[3] for row in summary})


def _engine_summary(connection, Q, by, logs=()):
    """Per group (one row without by): (group, every number sound, every store's weeks proven
    distinct, the number of distinct weeks where the bitstrings give it (else None), and for the
    price and each regressor whether it never changes). Numbers are sound with a count of n and
    extremes finite, within VALUE_LIMIT and positive where a log is taken (NaN is the largest
    number to DuckDB). Weeks are proven distinct where they are integers with distinct residues
    modulo WEEK_BITS (distinct integers are distinct labels), and counted where every label is an
    integer written plainly and they span fewer than WEEK_BITS weeks."""
    numbers = _numbers(Q)
    sound = [f"{name}_count = n AND abs({name}_low) <= {VALUE_LIMIT:g} AND abs({name}_high) <= {VALUE_LIMIT:g}"
             for name in numbers] + [f"{name}_low > 0" for name in _positive(Q, logs)]
    counted = (f"CASE WHEN bool_and(numbered = n AND plain) AND CAST(max(last_week) AS HUGEINT) - min(first_week) < "
               f"{WEEK_BITS} THEN bit_count(bit_or(week_bits)) END")
    flat = ", ".join(f"min({name}_low) = max({name}_high)" for name in numbers[1:])
    return connection.execute(f"SELECT {'grp' if by else '0'}, bool_and(coalesce({' AND '.join(sound)}, false)), "
                              f"bool_and(store NOT IN ({_doubtful(by)})), {counted}, {flat} FROM stores GROUP BY ALL"
                              ).fetchall()


def _doubtful(by):
    """SQL: the stores whose weeks the pass could not prove distinct: all integers, with distinct
    residues over all the store's rows (with --holdout its folds, where a week written two ways
    can fall in two folds)."""
    return (f"SELECT store FROM stores GROUP BY {'grp, ' if by else ''}store HAVING NOT (sum(numbered) = sum(n) "
            "AND bit_count(bit_or(week_bits)) = sum(n))")


def _engine_repeats(connection, source, path, columns, x, by):
    """Refuses a store and week given twice, or a missing week, among the stores whose weeks the
    pass could not prove distinct (weeks written as dates, say): their rows grouped by store and
    week, in a second pass."""
    found = _watched(connection, f"SELECT store, {_trim(_label('week'))} AS label FROM {source} WHERE {_label('store')} "
                     f"IN ({_doubtful(by)}) GROUP BY {'grp, ' if by else ''}store, label HAVING count(*) > 1 OR label IS "
                     "NULL OR label = '' LIMIT 1").fetchone()
    if found:
        _exact_or(path, columns, x, by)
        store, week = map(_shown_label, found)
        raise InputError(f"{_escaped(path)}: store '{store}', " + (f"week '{week}' is given twice: one row a store and week"
                                                                   if week else "week '': the week is missing"))


def _engine_weeks(connection, source, by, counted):
    """{group: the number of distinct week labels}: counted by the pass's bitstrings, else (None)
    by a second pass."""
    if any(weeks is None for weeks in counted.values()):
        counted = dict(_watched(connection, f"SELECT {_label('grp') if by else '0'}, count(DISTINCT "
                                f"{_trim(_label('week'))}) FROM {source} GROUP BY ALL").fetchall())
    return counted


class _ExactlyRead(Exception):
    """The exact reader read without a fault a file in which DuckDB found one: load reads it."""


def _exact_or(path, columns, x, by):
    """Where a CSV file can be read exactly (up to REREAD_UP_TO, no --by), read it: the exact
    reader raises the InputError with line and column of the fault the engine found, or, where
    it finds none (a row of spaces or of separators only, which it skips), _ExactlyRead."""
    if not _is_parquet(path) and os.path.getsize(path) <= REREAD_UP_TO and by is None:
        read_long(path, x=x, **columns)
        raise _ExactlyRead


def _lag_query(sample, P, names, by):
    """Per-store lag sums (Lags) over consecutive weeks, where the week labels are numbers, of the
    stores in the pass's sample (rows: grp, store, week, sales, price, x0..)."""
    lagged = ", ".join(["lag(ln(sales)) OVER w AS y_a", "lag(TRY_CAST(week AS DOUBLE)) OVER w AS t_a"]
                       + [f"lag({names[j]}) OVER w AS c{j}_a" for j in range(P)])
    inner = (f"SELECT {'grp, ' if by else ''}store, ln(sales) AS y_b, TRY_CAST(week AS DOUBLE) AS t_b, "
             + ", ".join(f"{names[j]} AS c{j}_b" for j in range(P)) + f", {lagged} FROM {sample} "
             f"WINDOW w AS (PARTITION BY {'grp, ' if by else ''}store ORDER BY TRY_CAST(week AS DOUBLE))")
    pair = "t_b - t_a = 1"
    terms = [f"count(*) FILTER (WHERE {pair}) AS pairs", f"sum(y_a * y_b) FILTER (WHERE {pair}) AS yy"]
    terms += [f"sum(c{j}_a * y_b) FILTER (WHERE {pair}) AS xy_{j}" for j in range(P)]
    terms += [f"sum(y_a * c{j}_b) FILTER (WHERE {pair}) AS yx_{j}" for j in range(P)]
    terms += [f"sum(c{j}_a * c{k}_b) FILTER (WHERE {pair}) AS xx_{j}_{k}" for j in range(P) for k in range(P)]
    terms += [f"sum(y_a) FILTER (WHERE {pair}) AS ya", f"sum(y_b) FILTER (WHERE {pair}) AS yb"]
    terms += [f"sum(c{j}_a) FILTER (WHERE {pair}) AS xa_{j}" for j in range(P)]
    terms += [f"sum(c{j}_b) FILTER (WHERE {pair}) AS xb_{j}" for j in range(P)]
    return (f"SELECT {'grp, ' if by else ''}store, {', '.join(terms)}, bool_and(t_b IS NOT NULL) AS numbered "
            f"FROM ({inner}) GROUP BY ALL")


def _engine_loaded(table, lags, weeks, P, x, folds, by):
    """Loaded (or {group: Loaded}) from the engine's per-store (and per-fold) sums; weeks: {group:
    the number of weeks}."""
    groups, out = table["grp"] if by else None, {}
    ends = np.r_[0, np.flatnonzero(groups[1:] != groups[:-1]) + 1 if by else [], len(table["store"])].astype(int)
    for start, end in zip(ends[:-1], ends[1:]):          # in order: a group's rows are adjacent, and a store's
        group = groups[start] if by else 0
        part = {key: np.asarray(value)[start:end] for key, value in table.items()}
        labels = part["store"]
        code = np.concatenate([[0], np.cumsum(labels[1:] != labels[:-1])]).astype(np.int64) if len(labels) else labels
        stores = labels[np.r_[0, np.flatnonzero(labels[1:] != labels[:-1]) + 1]].tolist() if len(labels) else []
        index = {store: i for i, store in enumerate(stores)}
        N = len(stores)

        def sums(mask):
            def add(values):
                return _bincounted(code[mask], values[mask], N)
            XtX = np.empty((N, P * P))
            for j in range(P):
                for k in range(P):
                    XtX[:, j * P + k] = add(part[f"xx_{min(j, k)}_{max(j, k)}"])
            return Sums(add(part["n"]), XtX, np.column_stack([add(part[f"xy_{j}"]) for j in range(P)]),
                        add(part["yy"]), np.column_stack([add(part[f"sx_{j}"]) for j in range(P)]), add(part["sy"]))
        folded = [sums(part["fold"] == f) for f in range(folds)] if folds else None
        total = sums(np.ones(len(code), dtype=bool))
        lag = None
        if lags is not None:
            at = (lags["grp"] == group) if by else np.ones(len(lags["store"]), dtype=bool)
            if np.all(np.asarray(lags["numbered"])[at]):
                lag = _engine_lags({key: np.asarray(value)[at] for key, value in lags.items()}, index, total, P)
        out[group] = Loaded(stores, int(weeks[group]), total, ["intercept", "log price"] + list(x), "long",
                            (float(np.log(np.min(part["price_low"]))), float(np.log(np.max(part["price_high"])))), lag, folded)
    if by:
        return out
    return next(iter(out.values()))


def _engine_lags(lags, index, sums, P):
    """Lags from the engine's per-store lag sums (by store label: index), with n, sy, sx from sums."""
    code, N = np.array([index[store] for store in lags["store"]], dtype=np.int64), len(sums.n)

    def add(values):
        return _bincounted(code, values, N)
    return Lags(add(lags["pairs"]), add(lags["yy"]), np.column_stack([add(lags[f"xy_{j}"]) for j in range(P)]),
                np.column_stack([add(lags[f"yx_{j}"]) for j in range(P)]),
                np.column_stack([add(lags[f"xx_{j}_{k}"]) for j in range(P) for k in range(P)]),
                add(lags["ya"]), add(lags["yb"]), np.column_stack([add(lags[f"xa_{j}"]) for j in range(P)]),
                np.column_stack([add(lags[f"xb_{j}"]) for j in range(P)]), sums.n, sums.sy, sums.sx)


def _bincounted(code, values, N):
    """Per-store totals (N,) of the engine's rows (its NULL sums, from no row, count 0)."""
    return np.bincount(code, np.nan_to_num(np.asarray(values, dtype=float)), N)

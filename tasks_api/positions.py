"""Manual order: the position keys of tasks among their siblings, and of lists.

A position is a decimal number between 0 and 10^10 written as its ten integer digits
(zero-padded) followed by its fraction's digits without trailing zeros: 5000000000 is
"5000000000", 5000000000.25 is "500000000025". For two such strings, plain string
comparison (code-point order, as JavaScript's `<` and Python's `<` compare) is the
comparison of the numbers: the integer parts have one width, and fractions without
trailing zeros compare digit by digit.

Why numbers rather than base-62 fractional-index strings: the arithmetic is exact and
short in SQL (PostgreSQL's `numeric`), so a move computes its key in the same statement
that reads its neighbours, under the user's lock, in one round trip.

- Appending (a new task, or one moved last or to a new place) needs no neighbour: its key
  is `nth(p)`, 5000000000 + p, where p is the change position the write gives it (the
  user's change counter, tasks_api/sync.py). Every key a user's rows ever got is at most
  `nth(counter then)`: appended ones by construction; a group's first one and a
  respaced group's are `nth(rank)`, and a group never has more members than its user has
  had writes; the others fall between two keys, or below one. The counter only grows, so
  an appended key is above every sibling's. So a create reads no other row, and one
  statement can make it.
- Prepending takes the integer below the first key (five billion fit), so it never
  lengthens a key either.
- Only a move between two neighbours takes a fraction: the shortest decimal strictly
  between them, near their midpoint, one digit longer at most and usually none. 54
  fraction digits remain before the 64-character limit: over 200 moves into the very same
  gap. Past that (or past either end of the range) the group is respaced: its members get
  `nth(0)`, `nth(1)`, ... in their order, and each changed key is a changed task (a new
  version, in the sync feed).

The same algorithm twice: `between` here (SQLite calls it as a registered SQL function)
and `position_between` compiled to SQL for PostgreSQL; tests/test_positions.py holds the
two to the same keys.
"""

from __future__ import annotations

import decimal
import sqlite3
from decimal import Decimal
from typing import Any

from sqlalchemy import String
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

DIGITS = 10
MAX_LENGTH = 64
FIRST = 5_000_000_000
CEILING = 10**DIGITS
# Room for 64-digit operands and their sum, exactly.
_EXACT = decimal.Context(prec=100, rounding=decimal.ROUND_HALF_UP)
SQLITE_FUNCTION = "tasks_position_between"


def parse(key: str) -> Decimal:
    return Decimal(f"{key[:DIGITS]}.{key[DIGITS:] or '0'}")


def render(value: Decimal) -> str | None:
    """The key of `value`; None when it has no key (out of range, or too long)."""
    if not 0 < value < CEILING:
        return None
    whole, _, fraction = f"{value:f}".partition(".")
    key = whole.zfill(DIGITS) + fraction.rstrip("0")
    return key if len(key) <= MAX_LENGTH else None


def nth(number: int) -> str | None:
    """The key 5000000000 + `number`: a respaced group's member of that rank, or a task
    appended with that change position; None past the range."""
    return str(FIRST + number).zfill(DIGITS) if FIRST + number < CEILING else None


def between(before: str | None, after: str | None) -> str | None:
    """A key strictly between two neighbours' keys (None: that end is open), or None
    when there is none short enough: the group must be respaced."""
    if before is None and after is None:
        return str(FIRST)
    with decimal.localcontext(_EXACT):
        if after is None:
            return render(parse(before).to_integral_value(decimal.ROUND_FLOOR) + 1)  # type: ignore[arg-type]
        high = parse(after)
        previous = high.to_integral_value(decimal.ROUND_CEILING) - 1
        if before is None and previous >= 1:
            return render(previous)
        low = Decimal(0) if before is None else parse(before)
        if high <= low:  # neighbours out of order or equal: only respacing mends that
            return None
        return render(_shortest(low, high))


def _shortest(low: Decimal, high: Decimal) -> Decimal:
    """The midpoint of low and high rounded to as few decimals as keeps it strictly
    between them. With k = -floor(log10(high - low)) decimals (at least 0) it may land on
    an end; with k + 1 it is within a twentieth of the gap of the midpoint, so inside."""
    middle = (low + high) * Decimal("0.5")
    digits = max(0, -(high - low).adjusted())
    candidate = middle.quantize(Decimal(1).scaleb(-digits))
    if low < candidate < high:
        return candidate
    return middle.quantize(Decimal(1).scaleb(-digits - 1))


def register_sqlite(connection: sqlite3.Connection) -> None:
    """Make `between` callable from SQL on this SQLite connection."""
    connection.create_function(SQLITE_FUNCTION, 2, between, deterministic=True)


class position_between(FunctionElement[str]):
    """SQL for `between(before, after)`: a key strictly between two keys (NULL: that end
    is open), or NULL when the group must be respaced."""

    type = String()
    inherit_cache = True


class position_nth(FunctionElement[str]):
    """SQL for `nth(number)`: 5000000000 + number as a key, NULL past the range."""

    type = String()
    inherit_cache = True


@compiles(position_between)
@compiles(position_nth)
def _generic(element: FunctionElement[str], compiler: SQLCompiler, **kw: Any) -> str:
    """How str() shows them (the statements run on PostgreSQL or SQLite)."""
    return f"{type(element).__name__}({compiler.process(element.clauses, **kw)})"


@compiles(position_between, "sqlite")
def _between_sqlite(element: position_between, compiler: SQLCompiler, **kw: Any) -> str:
    return f"{SQLITE_FUNCTION}({compiler.process(element.clauses, **kw)})"


@compiles(position_nth, "sqlite")
def _nth_sqlite(element: position_nth, compiler: SQLCompiler, **kw: Any) -> str:
    number = compiler.process(element.clauses, **kw)
    key = f"printf('%0{DIGITS}d', {FIRST} + {number})"
    return f"(CASE WHEN {FIRST} + {number} < {CEILING} THEN {key} END)"


@compiles(position_nth, "postgresql")
def _nth_postgresql(element: position_nth, compiler: SQLCompiler, **kw: Any) -> str:
    number = compiler.process(element.clauses, **kw)
    return (
        f"(CASE WHEN {FIRST} + {number} < {CEILING}"
        f" THEN lpad(({FIRST} + {number})::text, {DIGITS}, '0') END)"
    )


# The PostgreSQL spelling of `between`: each step a nested select, so each value is
# computed once. `lo` and `hi` are the neighbours' numbers, `n` the chosen one, `k` its key.
_BETWEEN_POSTGRESQL = """(SELECT
   CASE WHEN n > 0 AND n < {ceiling} AND length(k) <= {max_length} THEN k END
 FROM (SELECT n, lpad(split_part(n::text, '.', 1), {digits}, '0')
                 || rtrim(split_part(n::text, '.', 2), '0') AS k
  FROM (SELECT CASE
     WHEN lo IS NULL AND hi IS NULL THEN {first}
     WHEN hi IS NULL THEN floor(lo) + 1
     WHEN lo IS NULL AND ceil(hi) - 1 >= 1 THEN ceil(hi) - 1
     WHEN hi <= coalesce(lo, 0) THEN NULL
     ELSE (SELECT CASE WHEN c > low AND c < hi THEN c ELSE round(m, d + 1) END
       FROM (SELECT low, m, d, round(m, d) AS c
         FROM (SELECT low, (low + hi) * 0.5 AS m, greatest(0, -floor(log(hi - low)))::int AS d
           FROM (SELECT coalesce(lo, 0) AS low) AS l) AS g) AS r)
   END AS n
   FROM (SELECT {lo} AS lo, {hi} AS hi) AS ends) AS chosen) AS keyed)"""


def _number(key: str) -> str:
    """SQL: the number a key (an SQL expression) stands for; NULL for NULL."""
    return f"(substr({key}, 1, {DIGITS}) || '.' || substr({key}, {DIGITS + 1}))::numeric"


@compiles(position_between, "postgresql")
def _between_postgresql(element: position_between, compiler: SQLCompiler, **kw: Any) -> str:
    before, after = (compiler.process(c, **kw) for c in element.clauses)
    return _BETWEEN_POSTGRESQL.format(
        ceiling=CEILING,
        max_length=MAX_LENGTH,
        digits=DIGITS,
        first=FIRST,
        lo=_number(before),
        hi=_number(after),
    )

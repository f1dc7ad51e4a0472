"""Which database exceptions mean "the database is away" rather than "this row is wrong".

One definition for every caller: the key/route cache serves stale entries on these, the
completion log and the feedback service spool on them, and the error handlers answer 503
(``DatabaseUnavailable``) instead of 500 when one escapes a request.
"""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

# Unreachable, dropped, or too slow: a refused connection is an OSError, a pool with no free
# connection within ``pool_timeout`` raises sqlalchemy's own TimeoutError (not a DBAPIError),
# a stalled statement an asyncio timeout.
DB_UNAVAILABLE: tuple[type[BaseException], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    OSError,
    TimeoutError,
)


def is_row_error(exc: BaseException) -> bool:
    """True when the database refused the data itself; anything else is treated as an outage."""
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return False
        return isinstance(exc, (sa_exc.IntegrityError, sa_exc.DataError))
    # Failed before reaching the database (e.g. a value JSON cannot encode).
    return isinstance(exc, sa_exc.StatementError)


def is_outage(exc: BaseException) -> bool:
    """The database is away (and the request's own data is not the problem)."""
    return isinstance(exc, DB_UNAVAILABLE) and not is_row_error(exc)

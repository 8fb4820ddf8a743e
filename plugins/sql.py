"""The SQL source: rows of any database SQLAlchemy reaches, streamed through a server-side cursor.

    --data 'sql:postgresql://user@host/db?query=SELECT body FROM notes WHERE lang = 'en''
    --data 'sql:postgresql://user@host/db?table=notes&column=body'
    --data 'sql:sqlite:///notes.db?table=notes&column=body'

The location is a SQLAlchemy URL; ``query``, ``table`` and ``column`` may ride in it (URL-encoded)
or come from ``options.sql``. A table is read as ``SELECT column FROM table`` built by SQLAlchemy
(names quoted, nothing pasted into SQL); a query is run as written. Rows come ``batch_size`` at a
time (``stream_results`` and ``yield_per``: a named cursor on PostgreSQL, a stepped cursor on
SQLite), never the whole result at once. The source never writes: the transaction is read-only
on PostgreSQL, the file opened read-only on SQLite, and nothing is ever committed elsewhere.
A row whose text is null, not a string, empty or too long is a reject with its row number;
a database that cannot be reached or a query that fails is a ``SourceError``.
``postgresql://`` uses psycopg (3); SQLAlchemy and psycopg are ``retain[sql]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator

from pydantic import Field

from retain.core.errors import SourceError
from retain.core.data.items import Item, Reject
from retain.plugins.sources import MAX_RECORD_BYTES
from retain.plugins.tables import _Records

# Options that may ride in the URL's query string (taken out before SQLAlchemy sees it).
URL_OPTIONS = ("query", "table", "column")
# Driverless PostgreSQL URLs get psycopg 3, the driver retain[sql] installs (SQLAlchemy's own
# default is psycopg2).
_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


@dataclass
class SqlOptions:
    query: str = ""                                                  # a SELECT whose rows are the records
    table: str = ""                                                  # or a table (schema.table) ...
    column: str = "text"                                             # ... and its text column (a one-column
                                                                     # query's result needs none)
    batch_size: Annotated[int, Field(gt=0)] = 1000                   # rows fetched at a time
    max_record_bytes: Annotated[int, Field(gt=0)] = MAX_RECORD_BYTES  # a longer text is rejected


def _sqlalchemy():
    try:
        import sqlalchemy
    except ImportError:
        raise SourceError("the sql source needs SQLAlchemy: pip install 'retain[sql]'") from None
    return sqlalchemy


class SqlSource:
    """Rows of a SQL database (a SQLAlchemy URL), a query's or a table's, read in batches."""

    streams = True

    def __init__(self, options: SqlOptions):
        self.options = options

    def read(self, location: str) -> Iterator[Item | Reject]:
        sa = _sqlalchemy()
        url, query, table, column, where = self._parse(sa, location)
        try:
            engine = sa.create_engine(url)
        except ModuleNotFoundError as exc:
            raise SourceError(f"sql: {where} needs the driver {exc.name}, not installed "
                              "(postgresql: pip install 'retain[sql]')") from None
        except sa.exc.ArgumentError as exc:
            raise SourceError(f"sql: {where}: {exc}") from None
        try:
            with engine.connect() as conn:
                yield from self._rows(sa, conn, query, table, column, where)
        except sa.exc.SQLAlchemyError as exc:
            detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise SourceError(f"sql: cannot read {where}: {detail}") from None
        finally:
            engine.dispose()

    def _parse(self, sa, location: str) -> tuple[Any, str, str, str, str]:
        """The URL without retain's options, the query, table and column (URL first, then options),
        and the URL as records name it (no password)."""
        try:
            url = sa.engine.make_url(location)
        except sa.exc.ArgumentError:
            raise SourceError(f"sql: {location!r} is not a database URL (e.g. postgresql://user@host/db "
                              "or sqlite:///file.db)") from None
        given = {key: url.query.get(key) for key in URL_OPTIONS}
        given = {key: value[-1] if isinstance(value, tuple) else value for key, value in given.items()}
        url = url.difference_update_query(URL_OPTIONS)
        where = url.render_as_string(hide_password=True)
        url = url.set(drivername=_DRIVERS.get(url.drivername, url.drivername))
        query = given["query"] or self.options.query
        table = given["table"] or self.options.table
        column = given["column"] or self.options.column
        if bool(query) == bool(table):
            raise SourceError("sql: give a query or a table (?query=SELECT... or ?table=NAME&column=NAME in "
                              "the URL, or options.sql.query / options.sql.table), not "
                              f"{'both' if query else 'neither'}")
        if url.get_backend_name() == "sqlite":
            url = _read_only_sqlite(url)
        return url, query, table, column, where

    def _rows(self, sa, conn, query: str, table: str, column: str, where: str) -> Iterator[Item | Reject]:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        if table:
            schema, _, name = table.rpartition(".")
            statement = sa.select(sa.table(name, sa.column(column), schema=schema or None).c[column])
        else:
            statement = sa.text(query)
        result = conn.execution_options(stream_results=True, yield_per=self.options.batch_size).execute(statement)
        keys = list(result.keys())
        if column in keys:
            index = keys.index(column)
        elif len(keys) == 1:
            index = 0
        else:
            raise SourceError(f"sql: the query's result has no column '{column}' (columns: {', '.join(keys)}); "
                              "set ?column= or options.sql.column")
        records = _Records("sql", keys[index], self.options.max_record_bytes, what="column")
        yield from records.of(where, ([row[index] for row in rows] for rows in result.partitions()))


def _read_only_sqlite(url):
    """A SQLite file opened read-only (a source never changes its input); it must exist."""
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return url
    if not Path(database).is_file():
        raise SourceError(f"sql: SQLite database not found: {database}")
    return url.set(database=f"file:{Path(database).resolve()}?mode=ro").update_query_dict({"uri": "true"})

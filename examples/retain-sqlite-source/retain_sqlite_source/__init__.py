"""A retain data source that reads one item per row of a SQLite table."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from retain.plugin import Item, Reject, SourceError, hookimpl

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class SqliteOptions:
    table: str = "items"
    column: str = "text"


class SqliteSource:
    """Rows of a SQLite table; the text is in options.sqlite.column."""

    def __init__(self, options: SqliteOptions):
        for value in (options.table, options.column):
            if not _IDENT.match(value):  # identifiers cannot be bound as parameters
                raise SourceError(f"sqlite: {value!r} is not a plain table/column name")
        self.options = options

    def read(self, location: str):
        path = Path(location)
        if not path.is_file():
            raise SourceError(f"sqlite: database not found: {location}")
        # Read-only: a source must never change its input.
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(f"SELECT rowid, {self.options.column} FROM {self.options.table} ORDER BY rowid")
            for rowid, value in rows:
                if isinstance(value, str) and value.strip():
                    yield Item(value, "sqlite", str(path), rowid)
                else:
                    yield Reject(f"column '{self.options.column}' is {'empty' if value == '' else type(value).__name__}",
                                 "sqlite", str(path), rowid, repr(value)[:200])
        except sqlite3.DatabaseError as exc:
            raise SourceError(f"sqlite: cannot read {self.options.table}.{self.options.column} "
                              f"from {location}: {exc}") from None
        finally:
            db.close()


@hookimpl
def register_sources(register):
    register("sqlite", SqliteSource, options=SqliteOptions, suffixes=(".db", ".sqlite", ".sqlite3"))

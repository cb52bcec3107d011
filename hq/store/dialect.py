"""What SQLite and PostgreSQL spell differently, so the store's tables and statements are written once.

Shared SQL is a template with ``{p1}``, ``{p2}`` … for parameters and ``{true}``, ``{boolean}``,
``{double}`` … for the words the two databases disagree on; :meth:`Dialect.render` fills them in.
Parameters are numbered on both (``?1`` for SQLite, ``$1`` for PostgreSQL), so a statement may use
one parameter twice and both backends pass the same arguments in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The most parameters a shared statement uses.
_MAX_PARAMETERS = 9


@dataclass(frozen=True)
class Dialect:
    """One database's spelling of the store's SQL."""

    #: ``?`` (SQLite's ``?NNN``) or ``$`` (PostgreSQL's ``$n``), followed by the parameter's number.
    parameter_prefix: str
    #: The column type of a flag, and the literals written into it.
    boolean: str
    true: str
    false: str
    #: The column type of a UNIX time in seconds.
    double: str
    #: The column type of a counter or id that may pass 2**31.
    bigint: str
    #: An ever-growing integer primary key, numbered by the database.
    serial_key: str
    #: Appended to tables with a composite primary key and no use for a separate row id.
    without_rowid: str
    #: Whether message ids come from a ``channels`` table row locked by each insert (several nodes
    #: share the database) rather than from the one process that owns the file.
    numbers_messages_in_table: bool
    #: Whether a read inside a transaction must lock what it read (``FOR UPDATE``); SQLite's
    #: ``BEGIN IMMEDIATE`` already gives the transaction the whole database.
    locks_rows: bool

    def render(self, template: str) -> str:
        """``template`` with its ``{p1}`` … parameters and ``{true}`` … words spelled for this database."""
        words = {f"p{n}": f"{self.parameter_prefix}{n}" for n in range(1, _MAX_PARAMETERS + 1)}
        words.update(boolean=self.boolean, true=self.true, false=self.false, double=self.double,
                     bigint=self.bigint, serial_key=self.serial_key, without_rowid=self.without_rowid)
        return template.format(**words)

    def for_update(self, alias: str) -> str:
        """The clause that locks the rows of ``alias`` a transaction's read returned ('' on SQLite)."""
        return f" FOR UPDATE OF {alias}" if self.locks_rows else ""


SQLITE = Dialect(parameter_prefix="?", boolean="INTEGER", true="1", false="0", double="REAL", bigint="INTEGER",
                 serial_key="INTEGER PRIMARY KEY AUTOINCREMENT", without_rowid=" WITHOUT ROWID",
                 numbers_messages_in_table=False, locks_rows=False)

POSTGRESQL = Dialect(parameter_prefix="$", boolean="BOOLEAN", true="TRUE", false="FALSE", double="DOUBLE PRECISION",
                     bigint="BIGINT", serial_key="BIGSERIAL PRIMARY KEY", without_rowid="",
                     numbers_messages_in_table=True, locks_rows=True)

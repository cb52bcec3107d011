"""Group commit: many concurrent writers, one transaction per batch, each answered after its commit.

Both backends store channel messages this way (hq/store/sqlite.py, hq/store/postgres.py). A caller
queues its item and awaits a future; one flusher task per store takes everything pending (at most
``max_batch`` items), hands it to the backend's ``commit`` (one transaction) and resolves every
caller's future with its own result only once that transaction has committed — an acknowledgement
still means "durably stored". Whatever arrives while a batch is being committed waits for the next
one, so the batch size follows the load by itself: one message alone is committed at once, a burst
is committed in a few transactions instead of one each.

No task for a writer alone: when nothing is being committed, the caller commits the batch itself
(what is pending, its own item included) and only what arrives meanwhile is left to a flusher task.
A lone writer (one message in flight, the common case of a quiet channel) thus costs no task per
message; tests/test_engine.py counts the tasks of 50 messages sent one after another.

One batch at a time, never two in flight. A second batch in flight would overlap only the network
and parsing of one commit with another; it would not make the commit itself (the database's
fsync, and on PostgreSQL the channel row's lock) any shorter, and it would let a later batch commit
before an earlier one — a sender's second message could then get a smaller id than its first. With
one in flight, items are committed in the order they were submitted, and the next batch simply grows
while the previous one commits.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: ``commit(items)`` stores ``items`` in one transaction and returns one result per item, in order;
#: raising fails every caller of the batch (nothing of it was committed).
CommitBatch = Callable[[Sequence[Item]], Awaitable[Sequence[Result]]]


class GroupCommit(Generic[Item, Result]):
    """A queue of items committed batch by batch by one flusher task; see the module's docstring.

    ``fails_queue(error)`` says whether a failed batch's error also fails what is queued behind it
    (a database outage: those callers are answered at once instead of each waiting out a deadline
    of its own); by default only the failed batch's callers see the error.
    """

    def __init__(self, commit: CommitBatch[Item, Result], max_batch: int, name: str,
                 fails_queue: Callable[[BaseException], bool] = lambda error: False) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self._max_batch = max_batch
        self._name = name
        self._fails_queue = fails_queue
        self._pending: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: A caller is committing a batch itself (no flusher task was needed for it).
        self._leading = False
        #: Batches committed so far (successful ones), for tests and measurements.
        self.batches = 0

    @property
    def pending(self) -> int:
        """How many items wait for a batch (not counting the one being committed)."""
        return len(self._pending)

    async def submit(self, item: Item) -> Result:
        """Queue ``item`` and wait until the batch it joined has committed; its result.

        A caller cancelled while its item still waits takes the item out of the queue (it is never
        stored); one cancelled while its batch commits may find the item stored anyway.
        """
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if not self._leading and (self._flusher is None or self._flusher.done()):
            # Nothing is being committed: commit what is pending here, in this caller's task.
            self._leading = True
            try:
                await self._commit_taken(self._take())
            finally:
                self._leading = False
            if self._pending:  # what arrived meanwhile goes on in one task, batch by batch
                self._flusher = asyncio.create_task(self._flush(), name=self._name)
        return await future

    async def close(self) -> None:
        """Wait until everything queued has been committed (or has failed)."""
        while self._leading or (self._flusher is not None and not self._flusher.done()):
            if self._flusher is not None and not self._flusher.done():
                await asyncio.gather(asyncio.shield(self._flusher), return_exceptions=True)
            else:
                await asyncio.sleep(0)  # a caller is committing its own batch: let it finish

    async def _flush(self) -> None:
        while self._pending:
            await self._commit_taken(self._take())

    async def _commit_taken(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        """Commit ``batch``; if that is cancelled (the caller's task or the loop is closing), every
        caller of the batch and of the queue gets an error instead of waiting forever."""
        try:
            if batch:
                await self._commit_one(batch)
        except BaseException as error:
            for _, future in batch + self._pending:
                if not future.done():
                    future.set_exception(error if isinstance(error, Exception) else asyncio.CancelledError())
            self._pending.clear()
            raise

    def _take(self) -> list[tuple[Item, asyncio.Future[Result]]]:
        """Up to ``max_batch`` queued items whose callers still wait, oldest first."""
        batch: list[tuple[Item, asyncio.Future[Result]]] = []
        taken = 0
        for taken, (item, future) in enumerate(self._pending, start=1):
            if not future.done():
                batch.append((item, future))
                if len(batch) == self._max_batch:
                    break
        del self._pending[:taken]
        return batch

    async def _commit_one(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._commit([item for item, _ in batch])
        except Exception as error:
            failed = batch
            if self._fails_queue(error):
                failed, self._pending = batch + self._pending, []
            for _, future in failed:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches += 1
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

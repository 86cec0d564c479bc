"""The device worker's scheduling policy, pure: given what is ready now, decide what the model thread runs next.

No threads, no asyncio, no session state: ``schedule`` reads plain records and returns a decision, which the
worker (worker.py) applies. The policy:

- a stream batch is up to ``max_batch`` ready sessions, oldest ready frame first; a session that is busy (reset,
  finish, snapshot on the model thread) or has ``MAX_POSTING`` results in post-processing waits (its frame
  policy then drops frames upstream instead of a backlog growing behind pose recovery);
- a batch that is not full waits for company until ``max_wait_s`` after its oldest frame became ready, unless
  every streaming session (one that sent a frame lately: the worker counts them) is in it already: a lone stream
  never waits for company that cannot come;
- background work (collection jobs) runs in units, one at a time: a unit runs when no stream frame can run, or
  after ``job_stream_batches`` stream batches in a row kept background work waiting. A ready frame therefore
  waits for one unit at most, never for a whole job;
- a batch of one frame, when no other session streams and no background work waits, has its result message made
  on the model thread too, right after its poses (``post_on_model``): the model thread would wait idle for the
  next frame anyway, and a lone stream's result then takes two thread hand-offs fewer (on a virtual machine each
  wake-up from idle costs ~0.1-0.2 ms of CPU) and reads its maps while they are still in that core's cache.
  Otherwise the post-processing pool makes it, in parallel with the next step.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

MAX_POSTING = 2  # results of one session in post-processing (poses, encoding) before it gets no new step


@dataclass(frozen=True)
class SchedulePolicy:
    max_batch: int
    max_wait_s: float
    job_stream_batches: int


@dataclass(frozen=True)
class Candidate:
    """A session holding a decoded frame."""

    key: Hashable  # what the worker finds the session by
    ready_at: float  # when its frame became ready (the worker's clock)
    busy: bool = False  # a reset / finish / snapshot holds the session
    posting: int = 0  # its results in post-processing

    @property
    def runnable(self) -> bool:
        return not self.busy and self.posting < MAX_POSTING


@dataclass(frozen=True)
class RunBatch:
    """Step these sessions together (oldest ready first); ``post_on_model``: their result messages are made on the
    model thread, right after the step."""

    keys: tuple[Hashable, ...]
    post_on_model: bool = False


@dataclass(frozen=True)
class RunUnit:
    """Run one unit of the next background job."""


@dataclass(frozen=True)
class Wait:
    """Nothing to run yet: wait for a change, or at most until ``until`` (None: no deadline)."""

    until: float | None = None


Decision = RunBatch | RunUnit | Wait


def runnable_batch(ready: Sequence[Candidate], max_batch: int) -> list[Candidate]:
    """The sessions a batch would take now: runnable ones, oldest ready frame first, at most ``max_batch``."""
    return sorted((c for c in ready if c.runnable), key=lambda c: c.ready_at)[:max_batch]


def schedule(
    ready: Sequence[Candidate],
    background_waiting: bool,
    batches_since_unit: int,
    now: float,
    policy: SchedulePolicy,
    *,
    streaming: int,
) -> Decision:
    """What runs next. ``batches_since_unit``: stream batches run since background work last got a unit, while
    it waited. ``streaming``: the sessions that could send a frame soon (those that sent one lately)."""
    batch = runnable_batch(ready, policy.max_batch)
    if background_waiting and (not batch or batches_since_unit >= policy.job_stream_batches):
        return RunUnit()
    if not batch:
        return Wait()
    if len(batch) < min(policy.max_batch, streaming) and policy.max_wait_s > 0:
        deadline = batch[0].ready_at + policy.max_wait_s
        if now < deadline:
            return Wait(deadline)
    alone = len(batch) == 1 and streaming <= 1 and not background_waiting
    return RunBatch(tuple(c.key for c in batch), post_on_model=alone)

"""The worker's scheduling policy (server/scheduler.py), without threads or a server."""

from __future__ import annotations

from spann3r.server.scheduler import MAX_POSTING, Candidate, RunBatch, RunUnit, SchedulePolicy, Wait, schedule

POLICY = SchedulePolicy(max_batch=3, max_wait_s=0.010, job_stream_batches=4)


def decide(ready, background_waiting, batches_since_unit, now, policy=POLICY, streaming=10):
    """``schedule`` with more streaming sessions than a batch takes, unless a test says otherwise."""
    return schedule(ready, background_waiting, batches_since_unit, now, policy, streaming=streaming)


def ready(*times: float, **kw) -> list[Candidate]:
    return [Candidate(f"s{i}", t, **kw) for i, t in enumerate(times)]


def test_nothing_ready_waits_without_deadline():
    assert decide([], False, 0, 1.0, POLICY) == Wait(None)


def test_a_full_batch_runs_at_once_oldest_first():
    cands = [Candidate("late", 1.003), Candidate("old", 1.000), Candidate("mid", 1.001), Candidate("new", 1.004)]
    assert decide(cands, False, 0, 1.004, POLICY) == RunBatch(("old", "mid", "late"))


def test_a_partial_batch_waits_until_the_oldest_frame_waited_max_wait():
    cands = ready(1.000, 1.002)
    assert decide(cands, False, 0, 1.005, POLICY) == Wait(1.010)
    assert decide(cands, False, 0, 1.010, POLICY) == RunBatch(("s0", "s1"))


def test_no_wait_for_company_that_cannot_come():
    """Every streaming session's frame is in the batch already: it runs at once, whatever ``max_wait_s``."""
    assert decide(ready(1.000), False, 0, 1.001, streaming=1) == RunBatch(("s0",), post_on_model=True)
    assert decide(ready(1.000, 1.001), False, 0, 1.002, streaming=2) == RunBatch(("s0", "s1"))
    assert decide(ready(1.000, 1.001), False, 0, 1.002, streaming=3) == Wait(1.010)  # a third may come
    # a session that cannot run now (posting) is no company either way: the other runs if it is the last streaming
    cands = [Candidate("posting", 1.0, posting=MAX_POSTING), Candidate("ok", 1.001)]
    assert decide(cands, False, 0, 1.002, streaming=1) == RunBatch(("ok",), post_on_model=True)


def test_no_wait_when_max_wait_is_zero():
    policy = SchedulePolicy(max_batch=3, max_wait_s=0.0, job_stream_batches=4)
    assert decide(ready(1.0), False, 0, 1.0, policy) == RunBatch(("s0",))


def test_busy_or_posting_sessions_wait():
    cands = [
        Candidate("busy", 1.0, busy=True),
        Candidate("posting", 1.0, posting=MAX_POSTING),
        Candidate("ok", 1.001, posting=MAX_POSTING - 1),
    ]
    assert decide(cands, False, 0, 2.0, POLICY) == RunBatch(("ok",))
    assert decide(cands[:2], False, 0, 2.0, POLICY) == Wait(None)


def test_background_unit_runs_when_no_stream_frame_can():
    assert decide([], True, 0, 1.0, POLICY) == RunUnit()
    assert decide([Candidate("busy", 1.0, busy=True)], True, 0, 1.0, POLICY) == RunUnit()


def test_background_unit_interleaves_after_job_stream_batches():
    cands = ready(1.0, 1.0, 1.0)
    assert decide(cands, True, POLICY.job_stream_batches - 1, 1.0, POLICY) == RunBatch(("s0", "s1", "s2"))
    assert decide(cands, True, POLICY.job_stream_batches, 1.0, POLICY) == RunUnit()


def test_a_decision_names_only_the_sessions_ready_when_it_is_made():
    """The worker claims exactly the frames of the decision at once: a session whose frame was superseded while
    the batch waited for company is simply not a candidate at the next decision."""
    first = decide(ready(1.000, 1.001), False, 0, 1.002, POLICY)
    assert first == Wait(1.010)
    only_s1 = [Candidate("s1", 1.001)]  # s0's frame was replaced and its successor is still decoding
    assert decide(only_s1, False, 0, 1.010, POLICY) == Wait(1.011)
    assert decide(only_s1, False, 0, 1.011, POLICY) == RunBatch(("s1",))


def test_a_lone_streams_result_is_made_on_the_model_thread():
    """Only a batch of one frame, with no other session streaming and no background work waiting: the model thread
    would be idle until the next frame. Any company keeps post-processing in the pool, beside the next step."""
    assert decide(ready(1.0), False, 0, 1.0, streaming=1) == RunBatch(("s0",), post_on_model=True)
    assert decide(ready(1.0), False, 0, 1.0, streaming=0) == RunBatch(("s0",), post_on_model=True)  # went quiet
    assert decide(ready(1.0), False, 0, 1.010, streaming=2) == RunBatch(("s0",))  # another session streams
    assert decide(ready(1.0, 1.0), False, 0, 1.0, streaming=2) == RunBatch(("s0", "s1"))  # a batch of two
    assert decide(ready(1.0), True, 0, 1.0, streaming=1) == RunBatch(("s0",))  # a job waits for the model thread

"""The batching policy as a plain function over plain data, and the shared admission gate."""

import pytest

from service.batching.batcher import Waiting, plan_batch
from service.batching.queue import Gate, QueueFull, ShuttingDown
from service.metrics import Metrics


def test_waits_until_the_oldest_has_waited_max_delay_unless_the_batch_is_full():
    queue = [Waiting(length=5, enqueued=10.0), Waiting(length=6, enqueued=10.002)]
    plan = plan_batch(queue, now=10.003, max_batch_size=4, max_delay=0.010)
    assert plan.take == [] and plan.wake_at == pytest.approx(10.010)
    assert plan_batch(queue, now=10.011, max_batch_size=4, max_delay=0.010).take == [0, 1]
    assert plan_batch(queue, now=10.003, max_batch_size=2, max_delay=0.010).take == [0, 1]  # full: go now
    assert plan_batch(queue, now=10.0, max_batch_size=4, max_delay=0.0).take == [0, 1]  # no delay: go at once


def test_groups_by_length_and_always_includes_the_oldest():
    lengths = [30, 3, 29, 4, 31, 5, 28]
    queue = [Waiting(n, enqueued=float(i)) for i, n in enumerate(lengths)]
    take = plan_batch(queue, now=100.0, max_batch_size=3, max_delay=0.0).take
    chosen = sorted(lengths[i] for i in take)
    assert 0 in take and chosen[-1] - chosen[0] == 2 and chosen[0] >= 28  # the oldest and its nearest lengths
    lengths[0] = 4
    queue[0] = Waiting(4, enqueued=0.0)
    take = plan_batch(queue, now=100.0, max_batch_size=3, max_delay=0.0).take
    assert 0 in take and max(lengths[i] for i in take) <= 5


def test_drops_gone_and_expired_items_before_compute():
    queue = [Waiting(5, 0.0, gone=True), Waiting(5, 0.0, deadline=1.0), Waiting(5, 0.0, deadline=9.0)]
    plan = plan_batch(queue, now=2.0, max_batch_size=8, max_delay=0.0)
    assert (plan.gone, plan.expired, plan.take) == ([0], [1], [2])
    assert plan_batch(queue[:2], now=2.0, max_batch_size=8, max_delay=0.0).take == []


def test_admission_is_all_or_nothing_and_each_refusal_is_counted_once():
    metrics = Metrics()

    def refused(reason: str) -> float:
        return metrics.registry.get_sample_value("seqserve_rejections_total", {"model": "m", "reason": reason}) or 0

    gate = Gate("m", max_queue=10, metrics=metrics)
    gate.check(depth=7, count=3)
    assert refused("queue_full") == 0
    with pytest.raises(QueueFull, match="queue is full"):
        gate.check(depth=7, count=4)
    assert refused("queue_full") == 1
    gate.closed = True
    with pytest.raises(ShuttingDown):
        gate.check(depth=0, count=1)
    assert (refused("shutting_down"), refused("queue_full")) == (1, 1)
    assert metrics.registry.get_sample_value("seqserve_queue_capacity", {"model": "m"}) == 10

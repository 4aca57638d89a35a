"""The ingress's calls to the model deployments (``serving.handles``, no Ray): requests that
arrive while earlier ones are under way share one call, and each keeps its own answer."""

from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import ActorDiedError

from serving.coalesce import Coalescer
from serving.handles import ROUNDS, HandleBackend


def event(event_id: str, user: object, item: object) -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": item, "rating": 5.0}


def test_coalescer_runs_a_lone_item_at_once_and_later_ones_together():
    rounds: list[list[int]] = []

    async def run(items: list[int]) -> list[int]:
        rounds.append(items)
        await asyncio.sleep(0.02)
        if 13 in items:
            raise ValueError("thirteen")
        return [2 * i for i in items]

    async def scenario() -> None:
        together = Coalescer(run)
        first = asyncio.create_task(together.submit(1))
        await asyncio.sleep(0.005)  # the first round runs: these wait for the next one
        later = [asyncio.create_task(together.submit(i)) for i in (2, 3, 4)]
        cancelled = asyncio.create_task(together.submit(5))
        await asyncio.sleep(0)
        cancelled.cancel()
        assert [await first] + [await t for t in later] == [2, 4, 6, 8]
        assert rounds == [[1], [2, 3, 4, 5]] and (together.rounds, together.items) == (2, 5)
        unlucky = [asyncio.create_task(together.submit(i)) for i in (12, 13)]
        for task in unlucky:  # an error reaches every item of its round; the next one runs
            with pytest.raises(ValueError, match="thirteen"):
                await task
        assert await together.submit_many([6, 7]) == [12, 14]

    asyncio.run(scenario())


class _Replica:
    """A deployment handle's ``method``: answers ``reply(*args)`` after a short wait."""

    def __init__(self, reply, delay: float = 0.01) -> None:
        self.reply, self.delay, self.calls = reply, delay, []
        self.in_flight = self.peak = 0

    def remote(self, *args):
        self.calls.append(args)

        class Response:
            def __await__(inner):
                async def settle():
                    self.in_flight += 1
                    self.peak = max(self.peak, self.in_flight)
                    try:
                        await asyncio.sleep(self.delay)
                    finally:
                        self.in_flight -= 1
                    return self.reply(*args)

                return settle().__await__()

            def cancel(inner) -> None:
                pass

        return Response()


def test_the_ingress_sends_concurrent_posts_in_one_call_each_and_keeps_their_answers_apart():
    """``HandleBackend.post_events``: posts that arrive while a check or an append is under way
    share the next call to the TwoTower check and to the EventStore; each post gets its own
    answer (a refused batch its 422, stored nowhere)."""

    def check(batches, now):
        return [
            (422, {"error": "unknown_item"}) if e[0]["item_id"] < 0 else (200, e) for e in batches
        ]

    checker = _Replica(check)
    store = _Replica(lambda batches: [(200, {"accepted": len(b)}) for b in batches])
    two_tower = type("Handle", (), {"check_events": checker})()
    backend = HandleBackend({"two_tower": two_tower}, 5.0, type("H", (), {"append": store})())
    posts = [[event(f"e{i}", 1, item)] for i, item in enumerate([3, 4, -1, 5, 6, 7])]

    async def post_all() -> list:
        first = asyncio.create_task(backend.post_events(posts[0]))
        await asyncio.sleep(0.002)
        return [await first, *await asyncio.gather(*map(backend.post_events, posts[1:]))]

    answers = asyncio.run(post_all())
    assert [a[0] for a in answers] == [200, 200, 422, 200, 200, 200]
    assert [len(args[0]) for args in checker.calls] == [1, 5]  # posts, not events, per call
    assert [len(args[0]) for args in store.calls] == [1, 4]  # the refused one is not sent
    stored = [b[0]["event_id"] for args in store.calls for b in args[0]]
    assert stored == ["e0", "e1", "e3", "e4", "e5"]

    def lost(batches, now):  # the TwoTower replica is gone, also when sent once more
        raise ActorDiedError()

    gone = HandleBackend({"two_tower": type("Handle", (), {"check_events": _Replica(lost)})()},
                         5.0, type("H", (), {"append": store})())  # fmt: skip

    async def post_two() -> list:
        return await asyncio.gather(*(gone.post_events(p) for p in posts[:2]))

    assert [a[0] for a in asyncio.run(post_two())] == [503, 503]  # each post of the round


def test_a_coalescer_keeps_up_to_its_concurrency_of_rounds_in_flight():
    running, peak, rounds = 0, 0, []

    async def run(items: list[int]) -> list[int]:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        rounds.append(items)
        await asyncio.sleep(0.02)
        running -= 1
        return items

    async def scenario() -> list[int]:
        together = Coalescer(run, concurrency=2)
        first = [asyncio.create_task(together.submit(i)) for i in (1, 2)]  # one round
        await asyncio.sleep(0.005)
        second = asyncio.create_task(together.submit(3))  # a second round beside it
        await asyncio.sleep(0.005)
        rest = [asyncio.create_task(together.submit(i)) for i in (4, 5, 6)]  # waits for one
        return [await t for t in [*first, second, *rest]]

    assert asyncio.run(scenario()) == [1, 2, 3, 4, 5, 6]
    assert rounds == [[1, 2], [3], [4, 5, 6]] and peak == 2


def test_the_ingress_sends_concurrent_gets_in_a_few_calls_a_model_with_their_own_answers():
    """``HandleBackend.recommend``: up to ``ROUNDS`` calls in flight to a model, each with every
    request that arrived meanwhile; each request its own answer; a lost replica fails its round."""

    def answers(requests):
        return [(404, b"") if user < 0 else (200, str(user).encode()) for user, _ in requests]

    two_tower, user_knn = _Replica(answers, delay=0.05), _Replica(answers)
    handles = {m: type("Handle", (), {"recommend_list": r})() for m, r in
               (("two_tower", two_tower), ("user_knn", user_knn))}  # fmt: skip
    backend = HandleBackend(handles, 5.0)
    waves = [[-1, 3], *([10 * w + i for i in range(5)] for w in range(1, 8))]

    async def get_all() -> list:
        tasks = [asyncio.create_task(backend.recommend("user_knn", 7, 5))]
        for wave in waves:  # a wave every 5 ms, while earlier calls take 50 ms
            tasks += [asyncio.create_task(backend.recommend("two_tower", u, 10)) for u in wave]
            await asyncio.sleep(0.005)
        return [await task for task in tasks]

    got = asyncio.run(get_all())
    users = [u for wave in waves for u in wave]
    assert got == [(200, b"7")] + [(404, b"") if u < 0 else (200, str(u).encode()) for u in users]
    assert user_knn.calls == [([(7, 5)],)]  # its own calls
    sent = [request for (requests,) in two_tower.calls for request in requests]
    assert sorted(sent) == sorted((u, 10) for u in users)  # each request once
    assert 1 < two_tower.peak <= ROUNDS  # calls side by side, never more than ROUNDS
    assert len(two_tower.calls) < len(waves)  # and the later waves together

    def lost(requests):
        raise ActorDiedError()

    gone = HandleBackend(
        {"two_tower": type("Handle", (), {"recommend_list": _Replica(lost)})()}, 5.0
    )

    async def get_two() -> list:
        return await asyncio.gather(*(gone.recommend("two_tower", u, 10) for u in (1, 2)))

    assert [a[0] for a in asyncio.run(get_two())] == [503, 503]

"""Search calls that fail over between shard replicas: pure, with stand-ins for the actors and Ray's get."""

from __future__ import annotations

from typing import Any

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

from shardwalk.core.errors import ShardUnavailableError
from shardwalk.workers import index_search
from shardwalk.workers.index_search import ReplicaCall, call_replicas


class Replica:
    """An actor stand-in: `search.remote()` hands back (replica, call number); `failures` say how calls end."""

    def __init__(self, name: str, failures: list[BaseException]) -> None:
        self.name, self.failures, self.calls = name, failures, 0
        self.search = self

    def remote(self, *args: Any) -> tuple[Replica, int]:
        self.calls += 1
        return self, self.calls


def _get(ref: tuple[Replica, int], timeout: float | None = None) -> str:
    replica, number = ref
    if number <= len(replica.failures):
        raise replica.failures[number - 1]
    return f"answer from {replica.name}"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(index_search.ray, "get", _get)
    monkeypatch.setattr(index_search.time, "sleep", slept.append)
    return slept


def test_a_restarting_replica_is_waited_for_with_growing_pauses(waits: list[float]) -> None:
    restarting = [ActorUnavailableError("restarting", None)] * 3
    (answer,) = call_replicas([[Replica("only", restarting)]], "search", [ReplicaCall(0, (), 0)], False, None, 0)
    assert answer == "answer from only"
    assert waits == [0.25, 0.5, 1.0]  # Ray does not retry these calls itself: the next three tries wait first


def test_a_dead_replica_hands_over_at_once_and_no_replica_is_a_typed_error(waits: list[float]) -> None:
    dead = ActorDiedError()
    (answer,) = call_replicas([[Replica("a", [dead]), Replica("b", [])]], "search", [ReplicaCall(0, (), 0)], False, None, 0)
    assert answer == "answer from b" and waits == []
    with pytest.raises(ShardUnavailableError, match="shard 0: no replica could answer"):
        call_replicas([[Replica("a", [dead] * 9)]], "search", [ReplicaCall(0, (), 0)], False, None, 0)
    assert waits == []
    assert call_replicas([[Replica("a", [dead] * 9)]], "search", [ReplicaCall(0, (), 0)], True, None, 0) == [None]

"""Bad input to a walk of many tokens (issue 28 item 5), refused before any actor starts. Pure: no Ray."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest

from shardwalk.core.errors import ConfigError, GraphError
from shardwalk.core.plan.sizing import Node
from shardwalk.core.srrw import SRRW, WalkerLayout, halo_mask
from shardwalk.core.srrw.shard import check_tokens_fit, shared_agents, token_bytes_on_actor, views
from shardwalk.core.srrw.token import RNG_WORDS

LES = nx.convert_node_labels_to_integers(nx.les_miserables_graph())
DIM = 5


def _two_parts(chain: SRRW) -> np.ndarray:
    return (np.arange(chain.num_nodes) >= chain.num_nodes // 2).astype(np.int64)


def test_more_tokens_than_memory_allows_are_refused_with_the_number_that_fits() -> None:
    chain = SRRW(LES, 1.0)
    owner = _two_parts(chain)
    layout = WalkerLayout(partitions=2, replicate=False, halo=0)
    seen = views(chain, [halo_mask(chain, owner == p, 0) for p in (0, 1)])
    shared = len(shared_agents(seen))
    per_token = 8 * (max(int(v.sum()) for v in seen) + shared + RNG_WORDS + 3 * DIM)  # two actors: + the baseline
    assert shared > 0 and token_bytes_on_actor(chain, layout, owner, DIM) == per_token
    data = 1000
    share = int(data * max(float((owner == p).mean()) for p in (0, 1)))
    node = Node(2, 8 * (share + 10 * per_token))  # two actors share it: a quarter of it holds their data and 10 tokens each
    check_tokens_fit(chain, 10, layout, owner, data, DIM, [node])
    with pytest.raises(ConfigError, match=rf"tokens=11 do not fit .* each token takes {per_token:,} bytes .* at most 10 tokens fit"):
        check_tokens_fit(chain, 11, layout, owner, data, DIM, [node])
    check_tokens_fit(chain, 10**6, layout, owner, data, DIM, [])  # no node known: nothing to check against


def test_a_partition_with_no_agents_is_refused_naming_it() -> None:
    chain = SRRW(LES, 1.0)
    gap = np.where(np.arange(chain.num_nodes) < 40, 0, 2)  # partition 1 holds no agent
    with pytest.raises(ConfigError, match=r"partition\(s\) \[1\] of 3 have no agents"):
        check_tokens_fit(chain, 2, WalkerLayout(partitions=3, replicate=False, halo=1), gap, 1000, DIM, [])


def test_a_graph_with_an_isolated_agent_is_refused_naming_it() -> None:
    graph = nx.path_graph(5)
    graph.add_node(9)
    with pytest.raises(GraphError, match=r"1 isolated agent\(s\) with no edge, e\.g\. \[9\]"):
        SRRW(graph, 1.0)

"""Agent graphs and data placement for token-based distributed optimisation.

An agent graph arrives as docs/design.md's edge list (`src`, `dst`: one row per undirected edge) and data
placement as the `node`, `id` assignment table. Everything a random walk needs is checked here, once:
the chain must be irreducible, so a disconnected graph, isolated agents, self-loops and duplicate edges
are `GraphError`s. Duplicates: an undirected edge must appear exactly once, so (u, v) twice *or* both
(u, v) and (v, u) is an error — unless `symmetric=True` says the table lists every edge in both
directions, in which case an edge without its reverse is a directed edge and an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import networkx as nx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from shardwalk.core.data.schema import EDGES_SCHEMA, validate_assignment, validate_edges
from shardwalk.core.errors import ConfigError, DataError, GraphError

# ----------------------------------------------------------------------------- graphs


def _edge_array(edges: pa.Table | np.ndarray | Sequence | nx.Graph, where: str) -> np.ndarray:
    if isinstance(edges, nx.Graph):
        if edges.is_directed():
            raise GraphError(f"{where}: the graph is directed; a random walk here needs an undirected graph")
        if edges.is_multigraph():
            raise GraphError(f"{where}: multigraphs are not supported (duplicate edges)")
        if not all(isinstance(v, int | np.integer) for v in edges.nodes()):
            raise DataError(f"{where}: node names must be integers; number them with shardwalk.core.srrw.agents.relabel_graph(graph)")
        arr = np.asarray(list(edges.edges()), dtype=np.int64).reshape(-1, 2)
        return arr
    if isinstance(edges, pa.Table):
        table = validate_edges(edges, where=where)
        return np.column_stack([table.column("src").to_numpy(), table.column("dst").to_numpy()])
    arr = np.asarray(edges)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{where}: an edge list must be integer pairs of shape (m, 2), got {arr.shape} {arr.dtype}")
    if len(arr) == 0:
        raise DataError(f"{where}: edge list is empty (0 rows)")
    return arr.astype(np.int64)


def name_nodes(edges: pa.Table, *, where: str = "edges") -> tuple[pa.Table, pa.Array | None]:
    """Number the nodes of an edge list whose `src`/`dst` are names (strings, ...) 0..n-1 in sorted order.

    Returns the int64 edge table and the names (index = node number), or None when nodes are integers.
    """
    missing = [c for c in ("src", "dst") if c not in edges.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {edges.column_names}")
    src, dst = edges.column("src"), edges.column("dst")
    if pa.types.is_integer(src.type) and pa.types.is_integer(dst.type):
        return edges, None
    if src.type != dst.type:
        raise DataError(f"{where}: columns 'src' ({src.type}) and 'dst' ({dst.type}) must hold the same kind of node name")
    for name, col in (("src", src), ("dst", dst)):
        if col.null_count:
            row = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{where}: column '{name}' has a null at row {row}")
    names = pc.unique(pa.chunked_array(src.chunks + dst.chunks)).sort()
    table = pa.table([pc.index_in(col, value_set=names).cast(pa.int64()) for col in (src, dst)], schema=EDGES_SCHEMA)
    return table, names


def map_node_names(table: pa.Table, names: pa.Array, *, column: str = "node", where: str = "assignment") -> pa.Table:
    """Replace the node names of `column` by their numbers from `name_nodes`; an unknown name is refused."""
    col = table.column(column)
    try:
        index = pc.index_in(col.cast(names.type), value_set=names)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise DataError(f"{where}: column '{column}' holds {col.type}, the edge list names nodes as {names.type}") from None
    if index.null_count:
        row = int(np.flatnonzero(index.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: column '{column}' names node {col[row].as_py()!r} at row {row}, which no edge mentions")
    return table.set_column(table.schema.get_field_index(column), column, index.cast(pa.int64()))


def relabel_graph(graph: nx.Graph) -> tuple[nx.Graph, list]:
    """A networkx graph with any hashable node names as agents 0..n-1 (sorted by name), and the names."""
    try:
        names = sorted(graph.nodes())
    except TypeError:  # mixed kinds of names: a deterministic order all the same
        names = sorted(graph.nodes(), key=lambda v: (type(v).__name__, str(v)))
    return nx.relabel_nodes(graph, {v: i for i, v in enumerate(names)}, copy=True), names


def _first_duplicate_pair(u: np.ndarray, v: np.ndarray) -> int | None:
    """Row index of the first (u, v) row that already appeared earlier (None if all unique)."""
    order = np.lexsort((np.arange(len(u)), v, u))
    su, sv = u[order], v[order]
    dup = (su[1:] == su[:-1]) & (sv[1:] == sv[:-1])
    return int(order[1:][dup].min()) if dup.any() else None


def build_graph(
    edges: pa.Table | np.ndarray | Sequence | nx.Graph,
    *,
    nodes: Iterable[int] | None = None,
    symmetric: bool = False,
    where: str = "edges",
) -> nx.Graph:
    """Validate an agent edge list into a connected, simple, undirected networkx graph of int agents."""
    arr = _edge_array(edges, where)
    loops = np.flatnonzero(arr[:, 0] == arr[:, 1])
    if loops.size:
        r = int(loops[0])
        raise GraphError(f"{where}: self-loop ({arr[r, 0]}, {arr[r, 1]}) at row {r}; the walk's self-loops come from its kernel")
    lo, hi = np.minimum(arr[:, 0], arr[:, 1]), np.maximum(arr[:, 0], arr[:, 1])
    if symmetric:
        directed = {(int(u), int(v)) for u, v in arr}
        dup = _first_duplicate_pair(arr[:, 0], arr[:, 1])
        if dup is not None:
            raise GraphError(f"{where}: duplicate edge ({arr[dup, 0]}, {arr[dup, 1]}) at row {dup}")
        for r, (u, v) in enumerate(arr):
            if (int(v), int(u)) not in directed:
                raise GraphError(f"{where}: directed edge ({u}, {v}) at row {r} has no reverse ({v}, {u}); symmetric=True needs both")
        keep = arr[:, 0] < arr[:, 1]
        lo, hi = lo[keep], hi[keep]
    else:
        dup = _first_duplicate_pair(lo, hi)
        if dup is not None:
            first = int(np.flatnonzero((lo == lo[dup]) & (hi == hi[dup]))[0])
            raise GraphError(
                f"{where}: duplicate edge ({arr[dup, 0]}, {arr[dup, 1]}) at row {dup} repeats row {first} "
                f"({arr[first, 0]}, {arr[first, 1]}); give each undirected edge once (or pass symmetric=True)"
            )
    graph = nx.Graph()
    if nodes is not None:
        graph.add_nodes_from(int(n) for n in nodes)
    graph.add_edges_from(zip(lo.tolist(), hi.tolist()))
    check_graph(graph, where=where)
    return graph


def check_graph(graph: nx.Graph, *, where: str = "graph") -> None:
    """Raise GraphError unless `graph` is non-empty, undirected, loop-free, without isolated agents, connected."""
    if graph.is_directed():
        raise GraphError(f"{where}: the graph is directed; a random walk here needs an undirected graph")
    if graph.number_of_nodes() < 2:
        raise GraphError(f"{where}: needs at least 2 agents, got {graph.number_of_nodes()}")
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise GraphError(f"{where}: self-loop {loops[0]}; the walk's self-loops come from its kernel")
    isolated = sorted(nx.isolates(graph))
    if isolated:
        raise GraphError(f"{where}: {len(isolated)} isolated agent(s) with no edge, e.g. {isolated[:5]}")
    if not nx.is_connected(graph):
        comps = sorted(nx.connected_components(graph), key=len, reverse=True)
        desc = ", ".join(f"{len(c)} agents (e.g. {sorted(c)[:3]})" for c in comps[:4])
        raise GraphError(
            f"{where}: graph is disconnected ({len(comps)} components: {desc}{', ...' if len(comps) > 4 else ''}); "
            "the walk must be irreducible — connect the components or run one walk per component"
        )


def edges_table(graph: nx.Graph) -> pa.Table:
    """docs/design.md's edge list of a graph: one (src < dst) row per undirected edge, sorted."""
    arr = np.asarray(sorted((min(u, v), max(u, v)) for u, v in graph.edges()), dtype=np.int64).reshape(-1, 2)
    return pa.table([pa.array(arr[:, 0]), pa.array(arr[:, 1])], schema=EDGES_SCHEMA)


def standard_graph(name: str, **params: int | float) -> nx.Graph:
    """Named graphs with agents 0..n-1: karate, les_miserables, barabasi_albert(n, m, seed), ring(n),
    grid(rows, cols), watts_strogatz(n, k, p, seed), random_regular(n, k, seed)."""
    makers = {
        "karate": lambda: nx.karate_club_graph(),
        "les_miserables": lambda: nx.les_miserables_graph(),
        "barabasi_albert": lambda n=900, m=2, seed=0: nx.barabasi_albert_graph(int(n), int(m), seed=int(seed)),
        "ring": lambda n=32: nx.cycle_graph(int(n)),
        "grid": lambda rows=8, cols=8: nx.grid_2d_graph(int(rows), int(cols)),
        "watts_strogatz": lambda n=100, k=4, p=0.1, seed=0: nx.connected_watts_strogatz_graph(
            int(n), int(k), float(p), seed=int(seed)
        ),
        "random_regular": lambda n=100, k=4, seed=0: nx.random_regular_graph(int(k), int(n), seed=int(seed)),
    }
    if name not in makers:
        raise ConfigError(f"unknown graph '{name}'; choose from {sorted(makers)}")
    try:
        raw = makers[name](**params)
    except TypeError as exc:
        raise ConfigError(f"bad parameters for graph '{name}': {exc}") from None
    except nx.NetworkXError as exc:
        raise ConfigError(f"graph '{name}' with {params}: {exc}") from None
    # sorted relabelling: node names (Les Misérables characters, grid tuples) -> 0..n-1, deterministically
    graph = nx.Graph()
    order = sorted(raw.nodes(), key=str) if name == "les_miserables" else sorted(raw.nodes())
    index = {v: i for i, v in enumerate(order)}
    graph.add_nodes_from(range(len(order)))
    graph.add_edges_from((index[u], index[v]) for u, v in raw.edges() if u != v)
    check_graph(graph, where=f"graph '{name}'")
    return graph


# ----------------------------------------------------------------------------- data placement


def spread(
    ids: np.ndarray,
    labels: np.ndarray | None,
    agents: Sequence[int],
    *,
    mode: str = "iid",
    seed: int = 0,
) -> pa.Table:
    """Assign every data id to one agent, >= 1 per agent: `iid` (seeded shuffle, near-equal shares) or
    `label_skew` (sorted by label, so each agent holds mostly one class). Returns the `node`, `id` table."""
    ids = np.asarray(ids, dtype=np.int64)
    agents = np.asarray(list(agents), dtype=np.int64)
    if len(agents) == 0:
        raise ConfigError("spread: no agents given")
    if len(ids) < len(agents):
        raise ConfigError(f"spread: {len(ids)} examples cannot give each of {len(agents)} agents at least one")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    if mode == "label_skew":
        if labels is None:
            raise ConfigError("spread: mode 'label_skew' needs labels")
        order = order[np.argsort(np.asarray(labels)[order], kind="stable")]
    elif mode != "iid":
        raise ConfigError(f"spread: unknown mode '{mode}'; choose 'iid' or 'label_skew'")
    owner = np.repeat(agents, np.diff(np.linspace(0, len(ids), len(agents) + 1).astype(np.int64)))
    table = pa.table([pa.array(owner), pa.array(ids[order])], names=["node", "id"])
    return table.sort_by([("node", "ascending"), ("id", "ascending")])


def agent_blocks(
    assignment: pa.Table,
    ids: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    graph: nx.Graph,
    *,
    where: str = "assignment",
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per graph node: (features, labels) of its data ids; every agent needs data and every id must exist."""
    table = validate_assignment(assignment, where=where)
    node_col = table.column("node").to_numpy()
    id_col = table.column("id").to_numpy()
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], id_col)
    pos = np.minimum(pos, len(ids) - 1)
    found = ids[order][pos] == id_col
    if not found.all():
        r = int(np.flatnonzero(~found)[0])
        raise DataError(f"{where}: data id {int(id_col[r])} at row {r} is not in the dataset")
    rows = order[pos]
    feats = np.asarray(features, dtype=np.float64)
    if not np.isfinite(feats[rows]).all():
        bad = rows[~np.isfinite(feats[rows]).all(axis=1)][0]
        raise DataError(f"{where}: data id {int(ids[bad])} has NaN or inf features")
    graph_nodes = set(graph.nodes())
    unknown = sorted(set(np.unique(node_col).tolist()) - graph_nodes)
    if unknown:
        raise GraphError(f"{where}: agent(s) {unknown[:5]} hold data but have no edge in the graph (isolated)")
    by_node = np.argsort(node_col, kind="stable")
    uniq, starts = np.unique(node_col[by_node], return_index=True)
    empty = sorted(graph_nodes - set(uniq.tolist()))
    if empty:
        raise DataError(f"{where}: {len(empty)} agent(s) have no data, e.g. {empty[:5]}")
    bounds = np.append(starts, len(by_node))
    labels = np.asarray(labels, dtype=np.int64)
    blocks = {}
    for k, node in enumerate(uniq.tolist()):
        sel = rows[by_node[bounds[k] : bounds[k + 1]]]
        blocks[int(node)] = (feats[sel], labels[sel])
    return blocks


# ----------------------------------------------------------------------------- partitioning


def partition(graph: nx.Graph, parts: int, *, seed: int = 0, weight: str | None = None) -> dict[int, int]:
    """Balanced partition of agents into `parts` with few cut edges: recursive Kernighan–Lin bisection.

    Each bisection starts from a BFS prefix of the target size (a connected, local half) and lets
    Kernighan–Lin swap pairs, which keeps part sizes exact, so any `parts` (not only powers of 2) works.
    `weight` names an edge attribute to minimise instead of the edge count (e.g. a walk's probability
    flow μ_i P_ij, so the token crosses partitions as rarely as possible).
    """
    check_parts(graph, parts)
    out: dict[int, int] = {}
    _bisect(graph, sorted(graph.nodes()), parts, 0, seed, out, weight)
    return out


def _bisect(
    graph: nx.Graph, nodes: list[int], parts: int, first: int, seed: int, out: dict[int, int], weight: str | None
) -> None:
    if parts == 1:
        out.update({n: first for n in nodes})
        return
    left_parts = parts // 2
    size = round(len(nodes) * left_parts / parts)
    sub = graph.subgraph(nodes)
    start = min(nodes, key=lambda n: (sub.degree(n), n))  # a peripheral-ish start keeps the BFS half compact
    order = _bfs_order(sub, start)
    init = (set(order[:size]), set(order[size:]))
    a, b = nx.algorithms.community.kernighan_lin_bisection(sub, partition=init, seed=seed, weight=weight or "weight")
    if len(a) != size:  # networkx does not promise to return the halves in the order given
        a, b = b, a
    _bisect(graph, sorted(a), left_parts, first, seed + 1, out, weight)
    _bisect(graph, sorted(b), parts - left_parts, first + left_parts, seed + 2, out, weight)


def _bfs_order(sub: nx.Graph, start: int) -> list[int]:
    """BFS order over every component (components after the first are appended in sorted order)."""
    seen: list[int] = []
    done: set[int] = set()
    for root in [start, *sorted(sub.nodes())]:
        if root in done:
            continue
        for v in nx.bfs_tree(sub, root).nodes():
            done.add(v)
            seen.append(v)
    return seen


PARTITIONERS = ("metis", "kl", "louvain", "range")
METIS_WEIGHT_SCALE = 1e6  # METIS takes integer edge weights: a float weight w becomes max(1, round(w × scale / max w))


def metis_partition(graph: nx.Graph, parts: int, *, seed: int = 0, weight: str | None = None) -> dict[int, int]:
    """Balanced partition with few cut edges by METIS (multilevel k-way, through pymetis), seeded.

    `weight` names an edge attribute to minimise instead of the edge count (scaled to integers)."""
    import pymetis

    check_parts(graph, parts)
    nodes = sorted(graph.nodes())
    if parts == 1:
        return {int(v): 0 for v in nodes}
    index = {v: i for i, v in enumerate(nodes)}
    xadj, adjncy, raw = [0], [], []
    for v in nodes:
        for u in sorted(graph.neighbors(v), key=index.__getitem__):
            adjncy.append(index[u])
            raw.append(float(graph[v][u].get(weight, 1.0)) if weight else 1.0)
        xadj.append(len(adjncy))
    top = max(raw, default=1.0) or 1.0
    eweights = [max(1, round(w * METIS_WEIGHT_SCALE / top)) for w in raw] if weight else None
    options = pymetis.Options(seed=int(seed) % (1 << 31))
    result = pymetis.part_graph(parts, adjacency=pymetis.CSRAdjacency(xadj, adjncy), eweights=eweights, options=options)
    owner = list(result.vertex_part)
    if len(set(owner)) != parts:  # METIS left a part empty (tiny graphs): fall back to Kernighan–Lin
        return partition(graph, parts, seed=seed, weight=weight)
    return {int(v): int(p) for v, p in zip(nodes, owner)}

BALANCE = 1.10  # a part may hold up to 10 % more agents than an even share


def range_partition(graph: nx.Graph, parts: int) -> dict[int, int]:
    """Contiguous ranges of the sorted agent ids (the naive baseline: it ignores the edges)."""
    check_parts(graph, parts)
    nodes = sorted(graph.nodes())
    bounds = np.linspace(0, len(nodes), parts + 1).astype(int)
    return {n: int(np.searchsorted(bounds, i, side="right") - 1) for i, n in enumerate(nodes)}


def louvain_partition(graph: nx.Graph, parts: int, *, seed: int = 0, weight: str | None = None) -> dict[int, int]:
    """Louvain communities packed into `parts` balanced parts (largest community into the lightest part).

    Documented fallback: when the packing is more than 10 % off balance (a community larger than a share,
    or fewer communities than parts, e.g. a complete graph), the Kernighan–Lin `partition` is used instead.
    """
    check_parts(graph, parts)
    comms = nx.algorithms.community.louvain_communities(graph, weight=weight or "weight", seed=seed)
    load = [0] * parts
    out: dict[int, int] = {}
    for comm in sorted(comms, key=lambda c: (-len(c), min(c))):
        target = min(range(parts), key=lambda k: (load[k], k))
        load[target] += len(comm)
        out.update({int(v): target for v in comm})
    if max(load) > BALANCE * graph.number_of_nodes() / parts or min(load) == 0:
        return partition(graph, parts, seed=seed, weight=weight)
    return out


def check_parts(graph: nx.Graph, parts: int) -> None:
    """ConfigError unless `parts` is a count of actors the graph's agents can fill."""
    if not isinstance(parts, int) or isinstance(parts, bool) or parts < 1:
        raise ConfigError(f"partitions must be an integer >= 1, got {parts!r}")
    if parts > graph.number_of_nodes():
        raise ConfigError(f"partitions={parts} exceeds the number of agents ({graph.number_of_nodes()})")


def cut_edge_fraction(graph: nx.Graph, part: dict[int, int]) -> float:
    """Fraction of edges whose ends lie in different parts (each such edge costs an actor hand-off)."""
    m = graph.number_of_edges()
    return sum(part[u] != part[v] for u, v in graph.edges()) / m if m else 0.0

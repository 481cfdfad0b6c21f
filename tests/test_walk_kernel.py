"""The vectorised walk kernel: a token's trajectory does not depend on its batch-mates, and the walk's
settings travel as one validated spec whose every field guards a resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shardwalk.core.errors import ConfigError
from shardwalk.core.srrw import SRRW, Schedule, WalkSpec, bind, halo_mask, run_sa_srrw, walk
from shardwalk.core.srrw.agents import standard_graph
from shardwalk.core.srrw.kernel import LEAVE, Resident, WalkContext, advance, walk_all
from shardwalk.core.srrw.objectives import LogisticRegression, SoftmaxRegression, add_intercept
from shardwalk.core.srrw.token import spec_tokens

LES = standard_graph("les_miserables")


def _objective(graph=LES, rows=lambda node: 1 + node % 4, seed=0):
    """Agents hold different row counts, so the padded data layout really pads."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=4)
    blocks = {}
    for node in graph.nodes():
        x = rng.normal(size=(rows(node), 4)) + (node % 3)
        blocks[node] = (add_intercept(x), (x @ w > 0).astype(np.int64))
    return LogisticRegression(blocks, lam=0.1)


def _same(a, b) -> bool:
    return (a.n == b.n and a.node == b.node and a.logy == b.logy and np.array_equal(a.theta, b.theta)
            and a.path == b.path and a.rng.bit_generator.state == b.rng.bit_generator.state)


@pytest.mark.parametrize("record_path", [True, False])  # True: the numpy kernel; False: the compiled one
def test_a_token_walks_the_same_alone_together_and_joining_late(record_path):
    spec = WalkSpec.build(steps=700, alpha=5.0, tokens=4, seed=3, record_path=record_path, polyak=True)
    together = run_sa_srrw(_objective(), LES, spec).tokens
    chain = SRRW(LES, spec.alpha)
    obj = bind(_objective(), chain)
    alone = spec_tokens(chain, obj.dim, spec)
    for tok in alone:
        walk(tok, chain, obj, spec.schedule, spec.steps)
    late = spec_tokens(chain, obj.dim, spec)  # tokens 0, 1 start; 2, 3 join after 250 iterations
    ctx = WalkContext(chain, obj, spec.schedule, spec.steps)
    res = Resident(obj.dim, chain.num_nodes, polyak=True)
    res.add(late[:2], ctx.tables)
    advance(res, ctx, 250)
    res.add(late[2:], ctx.tables)
    while len(res):
        advance(res, ctx, 100)
    for a, b, c in zip(together, alone, late):
        assert _same(a, b) and _same(a, c)
        np.testing.assert_array_equal(a.theta_bar, b.theta_bar)


@pytest.mark.parametrize(("record_path", "base"), [(True, "mhrw"), (False, "mhrw"), (False, "nbrw"), (False, "iid")])
def test_hand_offs_between_two_halves_in_one_process_keep_the_trajectory(record_path, base):
    """Tokens leave a half mid-chunk of pre-drawn uniforms: their streams must rewind exactly."""
    alpha = 10.0 if base == "mhrw" else 0.0
    spec = WalkSpec.build(steps=900, alpha=alpha, base=base, tokens=3, seed=8, record_path=record_path, project=50.0)
    ref = run_sa_srrw(_objective(), LES, spec).tokens
    chain = SRRW(LES, spec.alpha, base)
    obj = bind(_objective(), chain)
    own = np.arange(chain.num_nodes) < chain.num_nodes // 2
    halves = []
    for mine in (own, ~own):
        held = halo_mask(chain, mine, 0)
        ctx = WalkContext(chain, obj.restrict(np.flatnonzero(held)), spec.schedule, spec.steps, held)
        halves.append((ctx, Resident(obj.dim, chain.num_nodes, polyak=False)))
    toks = spec_tokens(chain, obj.dim, spec)
    for tok in toks:
        halves[0 if own[tok.node] else 1][1].add([tok], halves[0][0].tables)
    moves = 0
    while any(len(res) for _, res in halves):
        for side, (ctx, res) in enumerate(halves):
            for tok, status, _ in advance(res, ctx, 7):
                if status == LEAVE:
                    moves += 1
                    halves[1 - side][1].add([tok], ctx.tables)
    assert moves > 10
    assert all(_same(a, b) for a, b in zip(ref, toks))


@pytest.mark.parametrize(("record_path", "halo"), [(True, 1), (False, 0), (False, 2)])
def test_sharded_measures_over_three_parts_with_many_tokens_keep_the_trajectory(record_path, halo):
    """Each part keeps its view of every token's measure; only the shared entries travel with a token,
    and the gathered tokens equal the reference's bit for bit (as 3 walker actors would run it)."""
    import networkx as nx

    from shardwalk.core.srrw.shard import MeasureShard, gather, shared_agents, views

    grid = nx.convert_node_labels_to_integers(nx.grid_2d_graph(15, 8))  # rows of 8: range parts are bands
    spec = WalkSpec.build(steps=600, alpha=10.0, tokens=40, seed=4, record_path=record_path, polyak=True)
    ref = run_sa_srrw(_objective(grid), grid, spec).tokens
    chain = SRRW(grid, spec.alpha)
    obj = bind(_objective(grid), chain)
    owner = np.arange(chain.num_nodes) * 3 // chain.num_nodes
    held = [halo_mask(chain, owner == p, halo) for p in range(3)]
    shared = shared_agents(views(chain, held))
    assert 0 < len(shared) < chain.num_nodes
    toks = spec_tokens(chain, obj.dim, spec)
    parts = []
    for p, view in enumerate(views(chain, held)):
        shard = MeasureShard(view, shared)
        for tok in toks:
            shard.seed(tok.key, tok.logy)
        ctx = WalkContext(chain, obj.restrict(np.flatnonzero(held[p])), spec.schedule, spec.steps, held[p])
        parts.append((ctx, Resident(obj.dim, chain.num_nodes, polyak=True, shard=shard), shard))
    for tok in toks:
        tok.logy, tok.partial = [tok.logy[i] for i in shared.tolist()], True
        parts[owner[tok.node]][1].add([tok], parts[0][0].tables)
    moves = carried = 0
    while any(len(res) for _, res, _ in parts):
        for ctx, res, _ in parts:
            for tok, status, _ in advance(res, ctx, 9):
                assert tok.partial
                if status == LEAVE:
                    moves, carried = moves + 1, max(carried, len(tok.logy))
                    parts[owner[tok.node]][1].add([tok], ctx.tables)
    assert moves > 40 and carried == len(shared)
    for tok in toks:
        gather(tok, shared, [shard.exclusive_entries() for _, _, shard in parts])
    assert all(_same(a, b) for a, b in zip(ref, toks))


def test_compiled_and_numpy_kernels_walk_the_same_recursion():
    """Two implementations of one recursion (their exp/tanh may round differently): close, same path."""
    spec = WalkSpec.build(steps=300, alpha=0.0, tokens=2, seed=5)
    chain = SRRW(LES, 0.0)
    obj = bind(_objective(), chain)
    runs = []
    for compiled in (True, False):
        toks = spec_tokens(chain, obj.dim, spec)
        walk_all(toks, WalkContext(chain, obj, spec.schedule, spec.steps, compiled=compiled))
        runs.append(toks)
    for a, b in zip(*runs):
        assert a.node == b.node and a.n == b.n == 300
        np.testing.assert_allclose(a.theta, b.theta, rtol=1e-10, atol=1e-13)
    with pytest.raises(ConfigError, match="compiled walk needs"):
        WalkContext(chain, obj, Schedule(record_path=True), 10, compiled=True)


def test_padded_logistic_rows_do_not_depend_on_batch_or_padding():
    obj = _objective()
    rng = np.random.default_rng(1)
    nodes = rng.integers(0, LES.number_of_nodes(), size=12)
    theta = rng.normal(size=(12, obj.dim))
    scale = rng.random(12)
    batch = theta.copy()
    obj.descend_batch(nodes, batch, scale)
    for k, node in enumerate(nodes.tolist()):
        one = theta[k].copy()
        obj.restrict([node]).descend(node, one, float(scale[k]))  # its own padding: none
        np.testing.assert_array_equal(one, batch[k])
        np.testing.assert_allclose(one, theta[k] - scale[k] * obj.grad(node, theta[k]), rtol=1e-12, atol=1e-14)


def test_default_descend_batch_is_descend_row_by_row():
    rng = np.random.default_rng(2)
    blocks = {n: (rng.normal(size=(3, 2)), rng.integers(0, 3, size=3)) for n in range(4)}
    obj = SoftmaxRegression(blocks, lam=0.1, classes=3)
    theta = rng.normal(size=(4, obj.dim))
    batch = theta.copy()
    obj.descend_batch(np.arange(4), batch, np.full(4, 0.3))
    for k in range(4):
        one = theta[k].copy()
        obj.descend(k, one, 0.3)
        np.testing.assert_array_equal(one, batch[k])


def test_a_token_of_another_walk_is_refused():
    spec = WalkSpec.build(steps=10, tokens=1)
    chain = SRRW(LES, 0.0)
    obj = bind(_objective(), chain)
    tok = spec_tokens(chain, obj.dim, spec)[0]
    walk(tok, chain, obj, Schedule(a=0.7), 5)
    res = Resident(obj.dim, chain.num_nodes, polyak=False)
    with pytest.raises(ConfigError, match="another step-size schedule"):
        res.add([tok], WalkContext(chain, obj, Schedule(a=0.8), 10).tables)


# ----------------------------------------------------------------------------- the spec and resume


CHANGES = {"alpha": 2.0, "base": "srw", "tokens": 3, "seed": 7, "theta0": (0.1,) * 5, "start": 4,
           "schedule.a": 0.85, "schedule.b": 0.95, "schedule.lr": 2.0, "schedule.project": 9.0,
           "schedule.polyak": True, "schedule.max_norm": 1e7, "schedule.record_every": 10,
           "schedule.record_path": True}
FIELDS = [f.name for f in dataclasses.fields(WalkSpec) if f.name not in ("schedule", "steps")] + [
    f"schedule.{f.name}" for f in dataclasses.fields(Schedule)]


def test_every_spec_field_has_a_change_below():
    assert sorted(CHANGES) == sorted(FIELDS)  # a new field must be added here, so resume guards it too


def _changed(spec: WalkSpec, field: str) -> WalkSpec:
    if field.startswith("schedule."):
        return dataclasses.replace(spec, schedule=dataclasses.replace(spec.schedule, **{field[9:]: CHANGES[field]}))
    return dataclasses.replace(spec, **{field: CHANGES[field]})


@pytest.mark.parametrize("field", FIELDS)
def test_resuming_with_any_other_spec_field_is_refused_naming_it(tmp_path, field):
    from shardwalk.core.storage.store import write_json_sealed
    from shardwalk.workers.walker import _initial_tokens, _meta_path, _run_record

    spec = WalkSpec.build(steps=100, alpha=1.0, tokens=2, seed=6)
    chain = SRRW(LES, 1.0)
    write_json_sealed(_meta_path(str(tmp_path)), _run_record(spec, chain, 5))
    other = _changed(spec, field)
    assert other != spec
    with pytest.raises(ConfigError, match=rf"different settings \({field}\)"):
        _initial_tokens(chain, 5, other, str(tmp_path), resume=True)
    longer = dataclasses.replace(spec, steps=500)  # a later stop continues the same trajectory
    assert len(_initial_tokens(chain, 5, longer, str(tmp_path), resume=True)) == 2


def test_spec_validates_once_with_one_wording():
    with pytest.raises(ConfigError, match=r"unknown walk setting\(s\) \['alhpa'\]"):
        WalkSpec.build(steps=10, alhpa=1.0)
    with pytest.raises(ConfigError, match="steps must be an integer >= 1"):
        WalkSpec.build(steps=0)
    with pytest.raises(ConfigError, match="alpha must be a finite number >= 0"):
        WalkSpec.build(steps=5, alpha=-1.0)
    with pytest.raises(ConfigError, match="theta0 must be a finite vector"):
        WalkSpec.build(steps=5, theta0=[np.nan])
    assert WalkSpec.build(steps=5, theta0=np.ones(2)).theta0 == (1.0, 1.0)


def test_this_machines_elementwise_functions_do_not_depend_on_position():
    """The kernel's exactness assumes it (true of numpy's AVX2 and scalar loops); a build where it fails
    would make trajectories depend on batch-mates, so this machine is checked, not trusted."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=4099) * 5
    for fn, arg in ((np.exp, x), (np.tanh, x), (np.log1p, np.abs(x)), (np.logaddexp, (x, x[::-1].copy()))):
        args = arg if isinstance(arg, tuple) else (arg,)
        full = fn(*args)
        for start, length in ((0, 1), (3, 2), (5, 7), (11, 16), (1, 33)):
            part = fn(*(a[start : start + length].copy() for a in args))
            np.testing.assert_array_equal(part, full[start : start + length])


def test_compiled_walk_records_snapshots_and_checkpoints_like_a_straight_run(tmp_path):
    from shardwalk.core.srrw import CHECKPOINT, DONE, load_token, make_tokens, save_token

    chain = SRRW(LES, 5.0)
    obj = bind(_objective(), chain)
    sched = Schedule(polyak=True, record_every=50)
    assert WalkContext(chain, obj, sched, 10).compiled
    straight = make_tokens(chain, obj.dim, sched, seed=3)[0]
    assert walk(straight, chain, obj, sched, 500) == DONE
    tok = make_tokens(chain, obj.dim, sched, seed=3)[0]
    stops = 0
    while walk(tok, chain, obj, sched, 500, checkpoint_every=100) == CHECKPOINT:
        save_token(tmp_path, tok)
        tok, stops = load_token(tmp_path, 0), stops + 1
    assert stops == 4 and tok.curve_n == straight.curve_n == list(range(50, 501, 50))
    np.testing.assert_array_equal(np.array(tok.curve_theta), np.array(straight.curve_theta))
    assert _same(tok, straight)
    np.testing.assert_array_equal(tok.theta_bar, straight.theta_bar)


def test_step_tables_grown_in_steps_equal_the_sequential_products() -> None:
    """StepTables grow in place (capacity doubling); every entry is the sequential Python-float recurrence."""
    import math

    from shardwalk.core.srrw.kernel import TABLE_CHUNK, StepTables

    tables = StepTables(0.8, 0.9, 5.0)
    for n in (0, 5, TABLE_CHUNK - 1, TABLE_CHUNK, 3 * TABLE_CHUNK + 7, 2 * TABLE_CHUNK):  # forward, then a no-op
        add, beta, log_scale = tables.ensure(n)
        assert len(add) == len(beta) == len(log_scale) - 1 > n
    log_c, want_add, want_beta = [0.0], [], []
    for k in range(len(add)):
        gamma = (k + 2.0) ** -0.8
        log_c.append(log_c[-1] + math.log1p(-gamma))
        want_add.append(math.log(gamma) - log_c[-1])
        want_beta.append(5.0 * (k + 2.0) ** -0.9)
    assert np.array_equal(add, want_add) and np.array_equal(beta, want_beta) and np.array_equal(log_scale, log_c)


# ----------------------------------------------------------------------------- tokens in transit as arrays


def test_kernel_streams_step_exactly_as_numpy_pcg64():
    """The kernels draw from a token's PCG64 words (shardwalk.core.srrw.compiled.next_uniform); the draws and the
    state after them are numpy's `Generator(PCG64).random()`'s, bit for bit."""
    from shardwalk.core.srrw.compiled import draw_uniforms
    from shardwalk.core.srrw.token import rng_words, set_rng_words

    for seed in range(12):
        rng = np.random.Generator(np.random.PCG64(seed))
        rng.random(seed * 7)
        words = np.array([rng_words(rng, 0)], dtype=np.uint64)
        got = np.empty(1)
        draws = []
        for _ in range(257):
            draw_uniforms(words, np.zeros(1, dtype=np.int64), got)
            draws.append(got[0])
        assert np.array_equal(draws, rng.random(257))
        assert rng_words(rng, 0) == words[0].tolist()
        other = np.random.Generator(np.random.PCG64(99))
        set_rng_words(other, words[0])
        assert other.random() == rng.random()


def test_a_batch_pickles_as_one_payload_whatever_its_size():
    """Ray ships a hand-off as one bytes payload (each extra buffer costs the receiver), not one object per
    token nor one buffer per array; it unpickles to the same tokens."""
    import pickle

    from shardwalk.core.srrw.token import TokenBatch

    spec = WalkSpec.build(steps=50, alpha=5.0, tokens=40, seed=1, polyak=True)
    chain = SRRW(LES, spec.alpha)
    obj = bind(_objective(), chain)
    toks = spec_tokens(chain, obj.dim, spec)
    counts = []
    for size in (2, 40):
        buffers: list = []
        blob = pickle.dumps(TokenBatch.from_tokens(toks[:size]), protocol=5, buffer_callback=buffers.append)
        counts.append(len(buffers))
        back = pickle.loads(blob, buffers=buffers)
        assert [_same(a, b) for a, b in zip(back.tokens(), toks[:size])] == [True] * size
        assert all(np.array_equal(a.theta_bar, b.theta_bar) for a, b in zip(back.tokens(), toks[:size]))
        assert back.logy.flags.writeable and back.rng.flags.writeable and back.arrived.dtype == bool
    assert counts[0] == counts[1] == 0


def test_a_batch_fills_payloads_under_a_limit_row_for_row():
    """A hand-off larger than Ray's inline limit goes as several calls: each part's payload is within the
    limit, the parts are the batch's rows in order, and `row_bytes` adds up to the payload shipped."""
    from shardwalk.core.srrw.token import TokenBatch

    spec = WalkSpec.build(steps=50, alpha=5.0, tokens=40, seed=1, polyak=True)
    chain = SRRW(LES, spec.alpha)
    toks = spec_tokens(chain, bind(_objective(), chain).dim, spec)
    batch = TokenBatch.from_tokens(toks)
    sparse = batch.select(np.arange(len(batch)))
    sparse.partial, sparse.logy[:, ::3] = True, np.nan  # a delta hand-off: unchanged entries left out
    for whole in (batch, sparse):
        assert abs(int(whole.row_bytes().sum()) - whole.nbytes) < 8
        limit = whole.nbytes // 3
        parts = whole.fill(limit)
        assert len(parts) >= 3 and all(part.nbytes <= limit for part in parts)
        back = TokenBatch.concat(parts)
        assert np.array_equal(back.key, whole.key) and np.array_equal(back.logy, whole.logy, equal_nan=True)
        assert whole.fill(whole.nbytes + 16) == [whole]


def test_a_batch_fills_whole_calls_first_and_leaves_the_rest_last():
    """An outbox sent because it is full goes as full calls and keeps its tail for the next one: `fill` packs
    each part up to the limit (one more row would not fit), in row order, the remainder last."""
    from shardwalk.core.srrw.token import TokenBatch

    spec = WalkSpec.build(steps=50, alpha=5.0, tokens=40, seed=1)
    chain = SRRW(LES, spec.alpha)
    whole = TokenBatch.from_tokens(spec_tokens(chain, bind(_objective(), chain).dim, spec))
    whole.partial, whole.logy[:, ::3] = True, np.nan
    limit = int(16 * whole.row_bytes()[0]) + 16  # the bit mask's padding aside
    parts = whole.fill(limit)
    assert [len(part) for part in parts] == [16, 16, 8]  # 40 rows of equal size, 16 to a call
    assert all(part.nbytes <= limit for part in parts)
    assert parts[0].nbytes + int(whole.row_bytes()[0]) > limit
    back = TokenBatch.concat(parts)
    assert np.array_equal(back.key, whole.key) and np.array_equal(back.logy, whole.logy, equal_nan=True)
    assert whole.fill(whole.nbytes + 16) == [whole]


def _sharded_walk(*, tokens: int, seed: int, actors: int, halo: int, delta: bool = False) -> tuple:
    """A 15 x 8 grid walk split over `actors` simulated walker actors (measures sharded), its tokens placed on
    their owners: (reference tokens, owner per agent, shared agents, [(context, resident, shard)] per actor)."""
    import networkx as nx

    from shardwalk.core.srrw.shard import MeasureShard, shared_agents, views
    from shardwalk.core.srrw.token import TokenBatch

    grid = nx.convert_node_labels_to_integers(nx.grid_2d_graph(15, 8))
    spec = WalkSpec.build(steps=600, alpha=10.0, tokens=tokens, seed=seed, polyak=True)
    ref = run_sa_srrw(_objective(grid), grid, spec).tokens
    chain = SRRW(grid, spec.alpha)
    obj = bind(_objective(grid), chain)
    owner = np.arange(chain.num_nodes) * actors // chain.num_nodes
    held = [halo_mask(chain, owner == p, halo) for p in range(actors)]
    shared = shared_agents(views(chain, held))
    toks = spec_tokens(chain, obj.dim, spec)
    parts = []
    for p, view in enumerate(views(chain, held)):
        shard = MeasureShard(view, shared, delta=delta)
        shard.seed_all(np.array([tok.logy for tok in toks]))
        ctx = WalkContext(chain, obj.restrict(np.flatnonzero(held[p])), spec.schedule, spec.steps, held[p])
        parts.append((ctx, Resident(obj.dim, chain.num_nodes, polyak=True, shard=shard), shard))
    for tok in toks:
        tok.logy, tok.partial = np.asarray(tok.logy)[shared], True
    first = TokenBatch.from_tokens(toks)
    for p in range(actors):
        parts[p][1].add_batch(first.select(np.flatnonzero(owner[first.node] == p)), parts[p][0].tables)
    return ref, owner, shared, parts


def test_hand_offs_as_batches_between_three_parts_keep_the_trajectory():
    """The walker actors' path: leavers taken as one batch, split by owner, concatenated per peer and added
    as batches (sharded measures) — the gathered tokens equal the reference's bit for bit."""
    from shardwalk.core.srrw.kernel import advance_batch
    from shardwalk.core.srrw.shard import gather
    from shardwalk.core.srrw.token import TokenBatch

    ref, owner, shared, parts = _sharded_walk(tokens=40, seed=4, actors=3, halo=1)
    done, moves = [], 0
    while any(len(res) for _, res, _ in parts):
        outbox: dict[int, list] = {}
        for ctx, res, _ in parts:
            stopped, statuses, errors = advance_batch(res, ctx, 37)
            if stopped is None:
                continue
            assert stopped.partial and stopped.logy.shape[1] == len(shared) and not any(errors)
            leave = np.array([s == LEAVE for s in statuses])
            done += [stopped.token(i) for i in np.flatnonzero(~leave).tolist()]
            rows = np.flatnonzero(leave)
            for peer in range(3):
                mine = rows[owner[stopped.node[rows]] == peer]
                if len(mine):
                    outbox.setdefault(peer, []).append(stopped.select(mine))
                    moves += len(mine)
        for peer, batches in outbox.items():
            parts[peer][1].add_batch(TokenBatch.concat(batches), parts[peer][0].tables)
    assert moves > 40 and len(done) == 40
    for tok in done:
        gather(tok, shared, [shard.exclusive_entries() for _, _, shard in parts])
    done.sort(key=lambda t: t.key)
    assert all(_same(a, b) for a, b in zip(ref, done))
    assert all(np.array_equal(a.theta_bar, b.theta_bar) for a, b in zip(ref, done))


def test_a_token_with_another_stream_or_off_the_graph_is_refused_and_nothing_joins():
    from shardwalk.core.srrw.token import TokenBatch

    spec = WalkSpec.build(steps=10, tokens=3)
    chain = SRRW(LES, 0.0)
    obj = bind(_objective(), chain)
    ctx = WalkContext(chain, obj, spec.schedule, spec.steps)
    res = Resident(obj.dim, chain.num_nodes, polyak=False)
    toks = spec_tokens(chain, obj.dim, spec)
    toks[1].rng = np.random.Generator(np.random.MT19937(0))
    with pytest.raises(ConfigError, match="token 1 draws from a MT19937 stream; the walk needs PCG64"):
        res.add(toks, ctx.tables)
    batch = TokenBatch.from_tokens(spec_tokens(chain, obj.dim, spec))
    batch.node[2] = chain.num_nodes
    with pytest.raises(ConfigError, match=rf"token 2 stands at agent index {chain.num_nodes} .* 77 agents"):
        res.add_batch(batch, ctx.tables)
    assert len(res) == 0


def test_capped_kernel_calls_let_tokens_take_turns_and_keep_the_trajectory():
    """With `call_hops`, a compiled call stops handing out turns once that many hops are walked; the next
    call continues with the next rows, and every token still walks its reference trajectory."""
    spec = WalkSpec.build(steps=400, alpha=5.0, tokens=12, seed=2)
    ref = run_sa_srrw(_objective(), LES, spec).tokens
    chain = SRRW(LES, spec.alpha)
    obj = bind(_objective(), chain)
    ctx = WalkContext(chain, obj, spec.schedule, spec.steps)
    assert ctx.compiled
    toks = spec_tokens(chain, obj.dim, spec)
    res = Resident(obj.dim, chain.num_nodes, polyak=False)
    res.add(toks, ctx.tables)
    for turn in range(2):
        advance(res, ctx, 64, call_hops=100)  # 64 hops per turn: the second turn reaches the cap
        assert res.n.tolist() == [64] * (2 * turn + 2) + [0] * (10 - 2 * turn)
    while len(res):
        advance(res, ctx, 64, call_hops=100)
    assert all(_same(a, b) for a, b in zip(ref, toks))


def test_the_plan_prices_a_token_with_the_walkers_stream_size() -> None:
    from shardwalk.core.plan.cost_model import TOKEN_STREAM_WORDS
    from shardwalk.core.srrw.token import RNG_WORDS

    assert TOKEN_STREAM_WORDS == RNG_WORDS


def test_a_checkpoint_of_a_sharded_token_gathers_the_whole_measure_of_its_step():
    """A token checkpointed on one part while its measure is sharded: its own entries there, the shared ones
    it carries and the other parts' exclusive entries (unchanged since it left them) make exactly the
    reference token at that step — what a walker actor saves, so a resume continues bit for bit."""
    import networkx as nx

    from shardwalk.core.srrw.kernel import CHECKPOINT, DONE, advance_batch
    from shardwalk.core.srrw.shard import MeasureShard, gather, shared_agents, views
    from shardwalk.core.srrw.token import TokenBatch

    grid = nx.convert_node_labels_to_integers(nx.grid_2d_graph(15, 8))
    spec = WalkSpec.build(steps=600, alpha=10.0, tokens=12, seed=5)
    refs = {n: run_sa_srrw(_objective(grid), grid, dataclasses.replace(spec, steps=n)).tokens for n in (200, 400)}
    chain = SRRW(grid, spec.alpha)
    obj = bind(_objective(grid), chain)
    owner = np.arange(chain.num_nodes) * 3 // chain.num_nodes
    held = [halo_mask(chain, owner == p, 1) for p in range(3)]
    shared = shared_agents(views(chain, held))
    toks = spec_tokens(chain, obj.dim, spec)
    parts = []
    for p, view in enumerate(views(chain, held)):
        shard = MeasureShard(view, shared)
        shard.seed_all(np.array([tok.logy for tok in toks]))
        ctx = WalkContext(chain, obj.restrict(np.flatnonzero(held[p])), spec.schedule, spec.steps, held[p], 200)
        parts.append((ctx, Resident(obj.dim, chain.num_nodes, polyak=False, shard=shard), shard))
    for tok in toks:
        tok.logy, tok.partial = np.asarray(tok.logy)[shared], True
    first = TokenBatch.from_tokens(toks)
    for p in range(3):
        parts[p][1].add_batch(first.select(np.flatnonzero(owner[first.node] == p)), parts[p][0].tables)
    resident = int(parts[0][1].key[0])
    with pytest.raises(ValueError, match=f"token {resident}'s measure entries are not kept here"):
        parts[0][2].exclusive_entries([resident])
    checked, done = 0, 0
    while any(len(res) for _, res, _ in parts):
        for ctx, res, _ in parts:
            stopped, statuses, _ = advance_batch(res, ctx, 53)
            for i, status in enumerate(statuses):
                one = stopped.select(np.array([i]))
                if status == CHECKPOINT:
                    key = int(one.key[0])
                    whole = one.token(0)
                    gather(whole, shared, [shard.exclusive_entries([key]) for _, _, shard in parts])
                    assert _same(whole, refs[whole.n][key]) and not whole.partial
                    checked += 1
                    res.add_batch(one, ctx.tables)  # and it walks on from here
                elif status == DONE:
                    done += 1
                else:
                    peer = parts[owner[one.node[0]]]
                    peer[1].add_batch(one, peer[0].tables)
    assert checked == 2 * spec.tokens and done == spec.tokens


def test_two_parts_ship_only_the_shared_entries_a_token_changed_and_keep_the_trajectory():
    """Two parts (`delta`): a leaving token carries only the shared entries it changed on its part (the rest
    NaN, left out of the payload), the peer fills the others from its own copy — bit for bit the reference."""
    import pickle

    from shardwalk.core.srrw.kernel import advance_batch
    from shardwalk.core.srrw.shard import gather

    ref, _, shared, parts = _sharded_walk(tokens=30, seed=6, actors=2, halo=2, delta=True)
    done, sent, dense = [], 0, 0
    while any(len(res) for _, res, _ in parts):
        for p, (ctx, res, shard) in enumerate(parts):
            stopped, statuses, _ = advance_batch(res, ctx, 41)
            if stopped is None:
                continue
            leave = np.array([s == LEAVE for s in statuses])
            done += [stopped.token(i) for i in np.flatnonzero(~leave).tolist()]
            if leave.any():
                out = stopped.select(np.flatnonzero(leave))
                dense += out.nbytes
                out.logy = shard.changed_only(out.key, out.logy)
                sent += out.nbytes
                arrived = pickle.loads(pickle.dumps(out))  # the wire: changed entries only
                assert np.isnan(arrived.logy).any()
                parts[1 - p][1].add_batch(arrived, parts[1 - p][0].tables)
    assert len(done) == 30 and sent < 0.7 * dense
    for tok in done:
        gather(tok, shared, [shard.exclusive_entries() for _, _, shard in parts])
    done.sort(key=lambda t: t.key)
    assert all(_same(a, b) for a, b in zip(ref, done))
    assert all(np.array_equal(a.theta_bar, b.theta_bar) for a, b in zip(ref, done))


def test_warm_up_readies_the_hand_off_copies_and_leaves_the_shard_untouched():
    """A walker actor compiles (or loads) the copies a hand-off runs before its walk is timed (the first
    hand-offs compiled them: ~0.5 s of each actor's CPU inside the walk): after `warm_up` a real hand-off —
    leavers parked, pickled with changed entries only, restored on the peer — compiles nothing new, and the
    actor's own shard is as it was."""
    import pickle

    from shardwalk.core.srrw import compiled
    from shardwalk.core.srrw.kernel import advance_batch, warm_up

    _, _, _, parts = _sharded_walk(tokens=6, seed=2, actors=2, halo=1, delta=True)
    (ctx, res, shard), (peer_ctx, peer_res, _) = parts
    before = (shard.kept.copy(), shard.present.copy(), shard.arrived.copy())
    warm_up(ctx, res.dim, shard)
    assert all(np.array_equal(a, b) for a, b in zip(before, (shard.kept, shard.present, shard.arrived)))
    copies = (compiled.take_columns, compiled.put_columns)
    ready = [set(f.signatures) for f in copies]
    leavers = None
    while leavers is None:
        stopped, statuses, _ = advance_batch(res, ctx, 50)
        leave = np.flatnonzero([s == LEAVE for s in statuses])
        if len(leave):
            leavers = stopped.select(leave)
    leavers.logy = shard.changed_only(leavers.key, leavers.logy)
    peer_res.add_batch(pickle.loads(pickle.dumps(leavers)), peer_ctx.tables)
    assert [set(f.signatures) for f in copies] == ready


def test_an_outbox_waits_while_the_peer_has_work_and_goes_when_full_short_or_old():
    """A hand-off call costs the actors ~2.8 ms of CPU: the outbox is held while the peer still has tokens to
    walk, and sent once it holds its share, the peer reports running short, or its oldest token waited."""
    from shardwalk.workers.walker import FLUSH_AGE_S, FLUSH_SHARE, STARVING_SHARE, flush_due

    share = 128.0  # 256 tokens on two actors
    full, short, busy = int(FLUSH_SHARE * share), STARVING_SHARE * share, share
    assert not flush_due(full - 1, 100, busy, 0.0, share)
    assert flush_due(full, 100, busy, 0.0, share)
    assert flush_due(1, 100, short - 1, 0.0, share)
    assert flush_due(1, 100, busy, FLUSH_AGE_S, share)


def test_a_walk_thread_that_fails_outside_the_kernel_leaves_its_reason_for_stats() -> None:
    """The walker actor's thread target keeps why it stopped; `WalkPartition.stats` raises it, so the driver
    (which polls stats while it waits) fails the walk rather than waiting for ever for the stranded tokens."""
    from shardwalk.workers.walker import _guarded

    failed: list[str] = []
    _guarded(lambda: {}["outbox"], failed)()
    assert failed == ["KeyError: 'outbox'"]
    _guarded(lambda: None, failed)()  # a walk that ends normally adds nothing
    assert failed == ["KeyError: 'outbox'"]

"""SRRW resume from token checkpoints stored in a bucket (moto on 127.0.0.1), bit-identical to an uninterrupted run."""

from __future__ import annotations

import pytest

from shardwalk.core.errors import CorruptArtifactError
from shardwalk.core.srrw import run_sa_srrw
from shardwalk.core.storage import store
from tests.test_walker import LES, _assert_same, _objective

pytestmark = pytest.mark.ray


def test_resume_from_bucket_checkpoints_matches_the_reference(ray_local, s3_bucket):
    from shardwalk.workers.walker import run_distributed_sa_srrw

    obj = _objective()
    kw = dict(alpha=10.0, seed=2, tokens=2, record_path=True)
    ckpt = f"{s3_bucket}/shardwalk/checkpoints/srrw-x"
    first = run_distributed_sa_srrw(obj, LES, steps=350, checkpoint_dir=ckpt, checkpoint_every=100, **kw)
    assert [t.n for t in first.tokens] == [350, 350]
    names = sorted(i.base_name for i in store.list_dir(ckpt))
    assert [n for n in names if n.endswith(".json")] == ["checkpoint.json", "token-0.json", "token-1.json"]
    assert len([n for n in names if n.startswith("token-0-n")]) == len([n for n in names if n.startswith("token-1-n")])
    resumed = run_distributed_sa_srrw(obj, LES, steps=800, checkpoint_dir=ckpt, checkpoint_every=100,
                                      resume=True, partitions=3, **kw)
    _assert_same(resumed, run_sa_srrw(obj, LES, steps=800, **kw))


def test_altered_bucket_checkpoint_is_refused_naming_it(s3_bucket):
    import networkx as nx

    from shardwalk.core.srrw import SRRW, Schedule, make_tokens
    from shardwalk.core.srrw.token_store import load_token, save_token

    chain = SRRW(nx.path_graph(4), alpha=1.0)
    token = make_tokens(chain, 3, Schedule(), tokens=1, seed=0)[0]
    uri = f"{s3_bucket}/ck"
    save_token(uri, token)
    assert load_token(uri, 0).n == token.n and load_token(uri, 1) is None
    obj = next(i.base_name for i in store.list_dir(uri) if i.base_name.endswith(".npy"))
    data = bytearray(store.read_bytes(f"{uri}/{obj}"))
    data[-1] ^= 1
    store.write_bytes(f"{uri}/{obj}", bytes(data))
    with pytest.raises(CorruptArtifactError, match=obj):
        load_token(uri, 0)

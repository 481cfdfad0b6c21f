"""Self-Repellent Random Walks driving token SGD (SA-SRRW): the public surface (docs/design.md, SRRW).

Sources: Doshi, Hu & Eun, "Self-Repellent Random Walks on General Graphs" (ICML 2023) for the kernel,
Hu, Doshi & Eun, "Accelerating Distributed Stochastic Optimization via SRRW" (ICLR 2024) for SA-SRRW.

    chain.py      the kernel K[x] and its rows          spec.py       WalkSpec, Schedule, WalkerLayout
    token.py      a token, its stream, TokenBatch        kernel.py     the walk: resident tokens, lock step
    compiled.py   the walk compiled (logistic models)    reference.py  run_sa_srrw, in one process
    partition.py  partitioners, halo, hand-off rule      trials.py     many trials at once (MSE studies)
    shardwalk.core.srrw.token_store  token checkpoints
"""

from shardwalk.core.srrw.chain import BASES, SRRW
from shardwalk.core.srrw.kernel import CHECKPOINT, DONE, FAILED, LEAVE, walk
from shardwalk.core.srrw.partition import count_handoffs, halo_mask, walk_partition
from shardwalk.core.srrw.reference import SAResult, bind, run_sa_srrw
from shardwalk.core.srrw.spec import Schedule, WalkerLayout, WalkSpec, resume_record
from shardwalk.core.srrw.token import Token, make_tokens, new_token, token_streams
from shardwalk.core.srrw.token_store import checkpoint_hint, load_token, save_token
from shardwalk.core.srrw.trials import run_sa_srrw_batch

__all__ = [
    "BASES", "CHECKPOINT", "DONE", "FAILED", "LEAVE", "SRRW", "SAResult", "Schedule", "Token", "WalkSpec",
    "WalkerLayout", "bind", "checkpoint_hint", "count_handoffs", "halo_mask", "load_token", "make_tokens",
    "new_token", "resume_record", "run_sa_srrw", "run_sa_srrw_batch", "save_token", "token_streams", "walk",
    "walk_partition",
]

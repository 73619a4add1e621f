"""Which samples each (rank, DataLoader worker) of a stream reads, and in which order: pure index arithmetic.

Two orders, both drawn from ``numpy.random.Generator(PCG64(SeedSequence([seed, epoch, ...])))`` only:

``exact`` (default for local releases)
    The global order G is a permutation of the N selected rows. Rank r takes every W-th position of what is
    left to read; worker k of K takes blocks of ``block`` consecutive samples of its rank's slice, block j
    going to worker ``j % K``. Every read is one random access (``pread`` locally).

``shards`` (default for remote releases)
    G lists the rows shard by shard, the shards in a permutation, each shard's rows in shard order, so that
    consecutive positions are consecutive bytes of one shard. Rank r takes a contiguous 1/W of what is left;
    its slice is cut into blocks of ``block`` samples and worker k takes a contiguous run of those blocks, so
    each worker reads its own shards front to back (one request per shard run, no per-cell requests). The
    worker then emits its samples through a shuffle buffer of ``buffer`` samples seeded by (seed, epoch, rank,
    worker): what it emits is a deterministic permutation, computed here from indices alone, so it can be
    resumed exactly.

The trade-off: ``exact`` gives the same global permutation for any world size and worker count, but reads
cells at random; ``shards`` reads sequentially, and its order is random only up to the shard permutation
plus a window of ``buffer`` samples, and depends on (W, K, block). Both give every rank the same number of
samples (wrap-around padding, or ``drop_last``), and both resume exactly: the consumed positions of G are
recorded, and a resumed ``shards`` stream with the same (W, K, block) continues with exactly the samples and
order the uninterrupted one would have produced (with another topology: exactly the remaining samples).
"""

from __future__ import annotations

import numpy as np

ORDERS = ("exact", "shards")


def rng(*words: int) -> np.random.Generator:
    """The generator of the stream's randomness for the given words (seed, epoch, ...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(w) for w in words])))


def global_order(mode: str, shard_codes: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """(N,) selected-row indices in G's order (``shard_codes``: each row's shard as an int, rows in manifest
    order). Without ``shuffle``: manifest order in both modes."""
    n = len(shard_codes)
    if not shuffle:
        return np.arange(n)
    g = rng(seed, epoch)
    if mode == "exact":
        return g.permutation(n)
    shards = np.unique(shard_codes)
    rank_of = np.empty(shards.max() + 1 if len(shards) else 0, dtype=np.int64)
    rank_of[g.permutation(shards)] = np.arange(len(shards))
    return np.lexsort((np.arange(n), rank_of[shard_codes]))


def pad_to_world(positions: np.ndarray, n: int, world: int, drop_last: bool) -> np.ndarray:
    """``positions`` cut (``drop_last``) or padded with wrap-around positions ``n, n+1, ...`` to a multiple of
    W."""
    m = len(positions)
    if drop_last:
        return positions[: m - m % world]
    if m % world:
        return np.concatenate([positions, n + np.arange(world - m % world, dtype=np.int64)])
    return positions


def exact_plan(
    positions: np.ndarray, rank: int, world: int, worker: int, workers: int, block: int
) -> np.ndarray:
    """Positions (rank, worker) yields in ``exact`` order, from the padded remaining positions."""
    mine = positions[rank::world]
    if workers > 1:
        mine = mine[(np.arange(len(mine)) // block) % workers == worker]
    return mine


def shard_parts(positions: np.ndarray, world: int, workers: int, block: int) -> list[list[np.ndarray]]:
    """[rank][worker] -> the contiguous run of G positions that worker reads, from the padded positions."""
    per_rank = len(positions) // world
    out = []
    for r in range(world):
        mine = positions[r * per_rank : (r + 1) * per_rank]
        blocks = -(-len(mine) // block)
        cuts = [min(len(mine), (blocks * k // workers) * block) for k in range(workers + 1)]
        out.append([mine[cuts[k] : cuts[k + 1]] for k in range(workers)])
    return out


def buffer_order(part: np.ndarray, buffer: int, seed: int, epoch: int, rank: int, worker: int) -> np.ndarray:
    """The order a shuffle buffer of ``buffer`` samples emits ``part`` in (read in ``part`` order).

    Each arriving sample enters the buffer; once it holds ``buffer`` samples, a uniformly drawn one leaves;
    at the end the rest leave in a random order. Seeded by (seed, epoch, rank, worker) only.
    """
    if buffer <= 1 or len(part) <= 1:
        return part.copy()
    g = rng(seed, epoch, 1 + rank, 1 + worker)
    draws = g.random(len(part))
    held: list[int] = []
    out = np.empty(len(part), dtype=part.dtype)
    k = 0
    for p, u in zip(part.tolist(), draws.tolist(), strict=True):
        held.append(p)
        if len(held) >= buffer:
            i = int(u * len(held))
            out[k] = held[i]
            held[i] = held[-1]
            held.pop()
            k += 1
    out[k:] = g.permutation(np.asarray(held, dtype=part.dtype))
    return out


def logical_worker(worker: int, workers: int, batches_done: int) -> int:
    """The part (and shuffle seed) DataLoader worker ``worker`` takes after ``batches_done`` whole batches of
    an epoch were consumed: the DataLoader's first batch comes from worker 0, and it must be the batch logical
    worker ``batches_done % K`` would have sent next."""
    return (worker + batches_done) % workers

"""Exact 1-nearest-neighbour search by blocked matrix products in torch (GPU when present, CPU otherwise).

The benchmark's classifier is 1-NN over all ``Train`` rows with the rule "ties go to the reference row with
the lowest index". Two things make a fast implementation subtly inexact, and this module handles both:

* **Float rounding.** Scores are computed in float32 (fast GEMM), whose rounding can reorder two references
  whose true scores are very close, or break an exact tie the wrong way. Every query keeps, besides its
  best float32 score, all references within a rigorous rounding bound of it (:func:`_tolerance`); when there
  is more than one such candidate, the candidates are re-scored in float64 on the CPU and the exact tie rule
  is applied there. The result is therefore the float64 answer (checked against a pure float64 run in
  ``tests/chammi_data/test_knn.py``), at the cost of the float32 product. ``dtype=torch.float64`` runs the
  whole search in float64 with the same logic.
* **Tie breaking.** ``argmax`` is only used when a query has a single candidate; otherwise candidates are
  sorted by (score descending, index ascending), so the lowest index wins regardless of the backend.

Scores (larger = nearer): ``cosine`` -> ``<q/|q|, r/|r|>``; ``l2`` -> ``2 <q, r> - |r|^2``, which orders
references exactly like ``-|q - r|^2`` (the ``|q|^2`` term is constant per query). The float64 re-scoring
of ``l2`` uses ``-|q - r|^2`` directly, which has no cancellation.

Memory: the reference matrix lives on the device once (N_ref x D); queries are processed in blocks of
``max(1, block_size // N_ref)`` rows, so the similarity block never exceeds ``block_size`` entries
(default 2**25, i.e. 128 MiB in float32) plus a boolean mask of the same shape. The full query x reference
matrix is never formed.

Leave-one-group-out searches pass ``query_groups`` / ``reference_groups`` (int codes): a reference whose
group equals the query's is excluded. Train rows get group ``-1`` so they are never excluded.
"""

from __future__ import annotations

import numpy as np
import torch

from chammi_data.evaluation.options import DEFAULT_BLOCK_SIZE, METRICS
from chammi_data.progress import progress as progress_bar

#: Candidate pairs re-scored in float64 per chunk (bounds the gathered (pairs, D) float64 buffers).
_REFINE_CHUNK = 4096


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` -> ``cuda`` when available, else ``cpu``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _as_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (rows, dim) array, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def _row_norms64(x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Euclidean norm of every row, computed in float64 chunk by chunk (no full float64 copy)."""
    out = np.empty(len(x), dtype=np.float64)
    for a in range(0, len(x), chunk):
        block = x[a : a + chunk].astype(np.float64)
        out[a : a + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return out


def _tolerance(metric: str, dim: int, unit: float, q_norm: torch.Tensor, r_max: float) -> torch.Tensor:
    """Bound on |computed - exact| score difference between any two references of a query, times 2 for margin.

    A dot product of length ``dim`` computed in a precision with unit roundoff ``unit`` is off by at most
    ``dim * unit * |q| |r|``; rounding and scaling each operand (normalisation) adds ``3 * unit`` per operand,
    hence ``(dim + 6)``. ``l2`` adds the doubled product, the
    rounded ``|r|^2`` and the final add. Two scores can each be off by that much, hence the factor 2; the
    final factor 2 is margin.
    """
    dot = (dim + 6) * unit * q_norm * r_max
    err = dot if metric == "cosine" else 2 * dot + 3 * unit * (q_norm * r_max + r_max * r_max)
    return 4 * err


class NearestNeighborIndex:
    """Exact 1-NN over a fixed reference matrix (rows = references, in the order that breaks ties).

    Args:
        references: (N_ref, D) float array or tensor; not copied to float64.
        metric: ``cosine`` or ``l2``.
        device: torch device for the products (``None``: cuda if available, else cpu).
        dtype: ``torch.float32`` (default, exact via float64 refinement) or ``torch.float64``.
    """

    def __init__(
        self,
        references: np.ndarray | torch.Tensor,
        metric: str = "cosine",
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.metric = metric
        self.device = resolve_device(device)
        self.dtype = dtype
        self.unit = float(torch.finfo(dtype).eps) / 2
        self.ref = _as_numpy(references, "references")
        if len(self.ref) == 0:
            raise ValueError("references are empty: 1-NN needs at least one reference row")
        self.dim = self.ref.shape[1]
        norms = _row_norms64(self.ref)
        if metric == "cosine" and not np.all(norms > 0):
            bad = np.flatnonzero(~(norms > 0))[:10].tolist()
            raise ValueError(f"references have zero-norm rows under cosine (first: {bad})")
        self.ref_norms = norms
        # The device copy, L2-normalised for cosine (norms from float64).
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        scale = 1.0 / norms if metric == "cosine" else np.ones_like(norms)
        self.ref_dev = self._to_device(self.ref, scale, np_dtype)
        if metric == "l2":
            self.ref_sq = torch.as_tensor(norms**2, dtype=dtype, device=self.device)
            self.r_max = float(norms.max())
        else:
            self.r_max = 1.0

    def _to_device(self, x: np.ndarray, scale: np.ndarray, np_dtype: type, chunk: int = 8192) -> torch.Tensor:
        """Rows of ``x`` times ``scale`` in the working dtype (two roundings per element, within the
        bound)."""
        out = torch.empty((len(x), x.shape[1]), dtype=self.dtype, device=self.device)
        for a in range(0, len(x), chunk):
            block = x[a : a + chunk].astype(np_dtype, copy=False) * scale[a : a + chunk, None].astype(
                np_dtype
            )
            out[a : a + chunk] = torch.from_numpy(np.ascontiguousarray(block)).to(self.device)
        return out

    def __len__(self) -> int:
        return len(self.ref)

    def search(
        self,
        queries: np.ndarray | torch.Tensor,
        *,
        query_groups: np.ndarray | None = None,
        reference_groups: np.ndarray | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        progress: bool = False,
    ) -> np.ndarray:
        """Index (into the references) of the nearest reference of every query row.

        Args:
            queries: (N_q, D) float array or tensor.
            query_groups, reference_groups: optional (N_q,) / (N_ref,) integer codes; a reference whose code
                equals the query's is excluded (leave-one-group-out). Query codes are >= 0; references with a
                negative code (Train rows) are never excluded. Give both or neither.
            block_size: maximum similarity entries computed at once.
            progress: show a progress bar over query blocks.

        Returns:
            (N_q,) int64 indices; ties resolved to the lowest index.
        """
        q = _as_numpy(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but references have {self.dim}")
        if (query_groups is None) != (reference_groups is None):
            raise ValueError("give both query_groups and reference_groups, or neither")
        q_norms = _row_norms64(q)
        if self.metric == "cosine" and not np.all(q_norms > 0):
            bad = np.flatnonzero(~(q_norms > 0))[:10].tolist()
            raise ValueError(f"queries have zero-norm rows under cosine (first: {bad})")
        qg = rg = None
        lo = 0
        if query_groups is not None:
            qg = torch.as_tensor(np.asarray(query_groups, dtype=np.int64), device=self.device)
            rg = torch.as_tensor(np.asarray(reference_groups, dtype=np.int64), device=self.device)
            if len(qg) != len(q) or len(rg) != len(self):
                raise ValueError(
                    "query_groups / reference_groups must have one code per query / reference row"
                )
        out = np.empty(len(q), dtype=np.int64)
        rows = max(1, int(block_size) // len(self))
        np_dtype = np.float32 if self.dtype == torch.float32 else np.float64
        scale = 1.0 / q_norms if self.metric == "cosine" else np.ones_like(q_norms)
        starts = range(0, len(q), rows)
        for a in progress_bar(
            starts, desc=f"1-NN ({self.metric})", unit="block", disable=not progress, leave=False
        ):
            b = min(a + rows, len(q))
            qb = self._to_device(q[a:b], scale[a:b], np_dtype)
            if self.metric == "cosine":
                sim = qb @ self.ref_dev.T
            else:
                sim = torch.addmm(-self.ref_sq.unsqueeze(0), qb, self.ref_dev.T, alpha=2.0)
            if qg is not None:  # Train references (group -1) lead: mask only the grouped tail
                tail = sim[:, lo:]
                tail.masked_fill_(qg[a:b, None] == rg[None, lo:], float("-inf"))
            out[a:b] = self._pick(sim, q, q_norms, a)
        return out

    def _pick(self, sim: torch.Tensor, q: np.ndarray, q_norms: np.ndarray, offset: int) -> np.ndarray:
        """Winner per row of a similarity block: the argmax when the runner-up is out of tolerance, else a
        float64 refinement of every candidate within tolerance (rare: near-ties and exact ties)."""
        if sim.shape[1] == 1:
            best, arg = sim[:, 0], torch.zeros(len(sim), dtype=torch.long, device=sim.device)
            second = torch.full_like(best, float("-inf"))
        else:
            # top-2 is one cheap pass; a full "within tolerance" mask would cost several passes per block.
            values, indices = sim.topk(2, dim=1)
            best, second, arg = values[:, 0], values[:, 1], indices[:, 0]
        if not torch.isfinite(best).all():
            row = offset + int(torch.nonzero(~torch.isfinite(best))[0])
            raise ValueError(f"query row {row} has no reference left (every reference is in its own group)")
        qn = torch.as_tensor(q_norms[offset : offset + len(sim)], dtype=sim.dtype, device=sim.device)
        tol = _tolerance(
            self.metric, self.dim, self.unit, qn if self.metric == "l2" else torch.ones_like(qn), self.r_max
        )
        winners = arg.cpu().numpy()
        multi = torch.nonzero(second >= best - tol).squeeze(1)
        if len(multi):
            cand = sim[multi] >= (best[multi] - tol[multi]).unsqueeze(1)
            rows, cols = torch.nonzero(cand, as_tuple=True)
            rows = multi[rows].cpu().numpy()
            cols = cols.cpu().numpy()
            scores = self._exact_scores(q, offset + rows, cols)
            # Sort by row, then score descending, then reference index ascending: first per row wins.
            order = np.lexsort((cols, -scores, rows))
            rows, cols = rows[order], cols[order]
            first = np.ones(len(rows), dtype=bool)
            first[1:] = rows[1:] != rows[:-1]
            winners[rows[first]] = cols[first]
        return winners

    def _exact_scores(self, q: np.ndarray, q_rows: np.ndarray, r_rows: np.ndarray) -> np.ndarray:
        """float64 scores of (query, reference) pairs; identical rows give bit-identical scores."""
        out = np.empty(len(q_rows), dtype=np.float64)
        for a in range(0, len(q_rows), _REFINE_CHUNK):
            qi, ri = q_rows[a : a + _REFINE_CHUNK], r_rows[a : a + _REFINE_CHUNK]
            qv = q[qi].astype(np.float64)
            rv = self.ref[ri].astype(np.float64)
            if self.metric == "cosine":
                # The query's own norm is a positive constant per query: it cannot change its ranking.
                rv /= self.ref_norms[ri][:, None]
                out[a : a + len(qi)] = (qv * rv).sum(axis=1)
            else:
                d = qv - rv
                out[a : a + len(qi)] = -(d * d).sum(axis=1)
        return out


def nearest_neighbors(
    queries: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    metric: str = "cosine",
    *,
    query_groups: np.ndarray | None = None,
    reference_groups: np.ndarray | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> np.ndarray:
    """One-shot exact 1-NN: (N_q,) int64 index of each query's nearest reference (ties -> lowest index)."""
    index = NearestNeighborIndex(references, metric=metric, device=device, dtype=dtype)
    return index.search(
        queries,
        query_groups=query_groups,
        reference_groups=reference_groups,
        block_size=block_size,
        progress=progress,
    )

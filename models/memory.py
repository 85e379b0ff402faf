"""A bounded, class-balanced replay memory."""

from __future__ import annotations

import ast
from collections.abc import Callable

import numpy as np

# Herding's cost is its picks times its candidates: a 1,000,000-row increment spent minutes on it.
# It herds at most HERDING_MAX exemplars a class (more follow the class mean without help), among at
# most HERDING_POOL candidates per exemplar herded (never fewer than HERDING_POOL_MIN).
HERDING_MAX = 500
HERDING_POOL = 10
HERDING_POOL_MIN = 2000

Embed = Callable[[np.ndarray], np.ndarray]


class ClassBalancedMemory:
    """Samples of every class seen, under one shared capacity split evenly across classes.

    Two ways to choose what to keep within a class:

    - ``reservoir``: a uniform sample of the class's stream (reservoir sampling), no model needed;
    - ``herding``: exemplars picked greedily so their mean embedding tracks the class mean
      (iCaRL), which matters most when the memory is small. Kept in priority order, so a
      shrinking share drops the least representative first.

    A class with fewer samples than its share lends the rest to the others. Samples are
    stored raw (unscaled), because the scaler moves as data arrives.
    """

    def __init__(self, *, capacity: int | None = None, fraction: float | None = None, selection: str = "reservoir", seed: int = 0) -> None:
        if (capacity is None) == (fraction is None):
            raise ValueError("give exactly one of capacity (samples) or fraction (of samples seen)")
        if capacity is not None and capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if selection not in ("reservoir", "herding"):
            raise ValueError(f"selection must be 'reservoir' or 'herding', got {selection!r}")
        self.fixed_capacity = capacity
        self.fraction = fraction
        self.selection = selection
        self.rng = np.random.default_rng(seed)
        self.buffers: dict[int, list[np.ndarray]] = {}
        # Optional per-sample payload kept in step with the rows (e.g. logits recorded when a sample entered).
        self.payloads: dict[int, list[np.ndarray]] = {}
        self.seen: dict[int, int] = {}

    @property
    def capacity(self) -> int:
        return self._capacity_at(sum(self.seen.values()))

    def _capacity_at(self, seen: int) -> int:
        if self.fixed_capacity is not None:
            return self.fixed_capacity
        return int(self.fraction * seen)  # type: ignore[operator]

    def __len__(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    def _quotas(self, capacity: int, available: dict[int, int]) -> dict[int, int]:
        """Even shares of ``capacity``; a class that cannot fill its share hands the rest on."""
        quotas = {c: 0 for c in available}
        left = capacity
        open_classes = [c for c in sorted(available) if available[c] > 0]
        while left > 0 and open_classes:
            share, extra = divmod(left, len(open_classes))
            if share == 0:
                for c in open_classes[:extra]:
                    quotas[c] += 1
                break
            for c in open_classes:
                grant = min(share, available[c] - quotas[c])
                quotas[c] += grant
                left -= grant
            open_classes = [c for c in open_classes if quotas[c] < available[c]]
        return quotas

    def update(self, x: np.ndarray, y: np.ndarray, embed: Embed | None = None, payload: np.ndarray | None = None) -> None:
        """Offer every sample of an increment to the memory (``embed`` is required for herding).

        ``payload`` (one row per sample) is kept with each sample the memory keeps.
        """
        if self.selection == "herding" and embed is None:
            raise ValueError("herding needs an embedding function")
        if payload is not None and len(payload) != len(y):
            raise ValueError(f"payload has {len(payload)} rows for {len(y)} samples")
        labels = [int(c) for c in np.unique(y)]
        for c in labels:
            self.seen.setdefault(c, 0)
            self.buffers.setdefault(c, [])
            self.payloads.setdefault(c, [])
        extra = payload if payload is not None else [None] * len(y)
        # What each class could hold: what it has kept, plus what arrives now.
        incoming = {c: int((y == c).sum()) for c in labels}
        available = {c: len(self.buffers[c]) + incoming.get(c, 0) for c in self.seen}
        # Shares are set by the capacity once this increment is counted, so a memory
        # sized as a fraction of what was seen fills on the very first increment.
        quotas = self._quotas(self._capacity_at(sum(self.seen.values()) + len(y)), available)
        if self.selection == "reservoir":
            self._reservoir(x, y, extra, quotas)
        else:
            self._herding(x, y, extra, quotas, embed)  # type: ignore[arg-type]
        for c, quota in quotas.items():
            buffer = self.buffers[c]
            if len(buffer) > quota:
                if self.selection == "herding":
                    keep = np.arange(quota)
                else:
                    # A uniform subset of a uniform sample is still uniform.
                    keep = np.sort(self.rng.choice(len(buffer), size=quota, replace=False))
                self.buffers[c] = [buffer[i] for i in keep]
                self.payloads[c] = [self.payloads[c][i] for i in keep]

    def _reservoir(self, x: np.ndarray, y: np.ndarray, extra, quotas: dict[int, int]) -> None:
        for row, label, more in zip(x, y, extra, strict=True):
            c = int(label)
            self.seen[c] += 1
            buffer, quota = self.buffers[c], quotas[c]
            if len(buffer) < quota:
                buffer.append(row.copy())
                self.payloads[c].append(more)
            else:
                j = int(self.rng.integers(self.seen[c]))
                if j < quota:
                    buffer[j] = row.copy()
                    self.payloads[c][j] = more

    def _herding(self, x: np.ndarray, y: np.ndarray, extra, quotas: dict[int, int], embed: Embed) -> None:
        for c in [int(v) for v in np.unique(y)]:
            new = x[y == c]
            more = self.payloads[c] + [extra[i] for i in np.flatnonzero(y == c)]
            old = np.stack(self.buffers[c]) if self.buffers[c] else np.zeros((0, x.shape[1]))
            candidates = np.concatenate([old, new])
            features = embed(candidates)
            features = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
            # The kept exemplars stand for every earlier sample of the class.
            weight_old = self.seen[c] / max(len(old), 1) if len(old) else 0.0
            weights = np.concatenate([np.full(len(old), weight_old), np.ones(len(new))])
            target = (features * weights[:, None]).sum(axis=0) / weights.sum()
            order = self._herd(features, weights, target, quotas[c], len(old))
            self.buffers[c] = [candidates[i].copy() for i in order]
            self.payloads[c] = [more[i] for i in order]
            self.seen[c] += len(new)

    def _herd(self, features: np.ndarray, weights: np.ndarray, target: np.ndarray, quota: int, n_old: int) -> np.ndarray:
        """Up to ``quota`` candidates to keep, in order: herded, then, past ``HERDING_MAX``, drawn by weight.

        Herding costs its picks times its candidates. On a large increment it herds among every
        kept exemplar and a uniform sample of the new rows, and a quota beyond ``HERDING_MAX`` is
        filled with a weighted draw of the rest (old exemplars weigh the samples they stand for):
        that many exemplars track the class mean without help. Small memories are unchanged.
        """
        herded = min(quota, HERDING_MAX)
        pool = max(HERDING_POOL * herded, HERDING_POOL_MIN)
        n_new = len(features) - n_old
        if n_new > pool:
            drawn = np.sort(self.rng.choice(n_new, size=pool, replace=False))
            among = np.concatenate([np.arange(n_old), n_old + drawn])
        else:
            among = np.arange(len(features))
        order = among[herding_order(features[among], target, herded)]
        if quota > herded and len(features) > len(order):
            rest = np.setdiff1d(np.arange(len(features)), order)
            # A weighted sample without replacement (Efraimidis-Spirakis): the largest log(u) / weight.
            keys = np.log(self.rng.random(len(rest))) / weights[rest]
            take = min(quota - herded, len(rest))
            order = np.concatenate([order, rest[np.argpartition(-keys, take - 1)[:take]]])
        return order

    def samples(self, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """All stored (x, y), classes in ascending order."""
        xs = [np.stack(b) for c, b in sorted(self.buffers.items()) if b]
        ys = [np.full(len(b), c, dtype=np.int64) for c, b in sorted(self.buffers.items()) if b]
        if not xs:
            return np.zeros((0, n_features)), np.zeros(0, dtype=np.int64)
        return np.concatenate(xs), np.concatenate(ys)

    def payload(self) -> np.ndarray:
        """The payload of every stored sample, in ``samples()`` order, padded with NaN to the widest (0 columns if none)."""
        rows = [p for c, b in sorted(self.payloads.items()) for p in b]
        width = max((len(p) for p in rows if p is not None), default=0)
        out = np.full((len(rows), width), np.nan, dtype=np.float32)
        for i, p in enumerate(rows):
            if p is not None:
                out[i, : len(p)] = p
        return out

    def class_counts(self) -> dict[int, int]:
        return {c: len(b) for c, b in sorted(self.buffers.items())}

    def state_dict(self, n_features: int) -> dict[str, np.ndarray]:
        x, y = self.samples(n_features)
        classes = np.array(sorted(self.seen), dtype=np.int64)
        return {
            "x": x,
            "y": y,
            "seen_classes": classes,
            "seen_counts": np.array([self.seen[int(c)] for c in classes], dtype=np.int64),
            "payload": self.payload(),
            "rng_state": np.frombuffer(repr(self.rng.bit_generator.state).encode(), dtype=np.uint8),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.seen = {int(c): int(n) for c, n in zip(state["seen_classes"], state["seen_counts"], strict=True)}
        self.buffers = {c: [] for c in self.seen}
        self.payloads = {c: [] for c in self.seen}
        payload = state.get("payload")
        for i, (row, label) in enumerate(zip(state["x"], state["y"], strict=True)):
            self.buffers[int(label)].append(np.asarray(row))
            more = payload[i] if payload is not None and payload.shape[1] else None
            # NaN pads a payload recorded when fewer columns existed (fewer classes known).
            self.payloads[int(label)].append(None if more is None else more[~np.isnan(more)])
        if "rng_state" in state and len(state["rng_state"]):
            self.rng.bit_generator.state = ast.literal_eval(bytes(state["rng_state"]).decode())


def herding_order(features: np.ndarray, target: np.ndarray, k: int) -> list[int]:
    """Indices of up to ``k`` rows chosen greedily so the running mean of the chosen stays closest to ``target``."""
    chosen: list[int] = []
    total = np.zeros_like(target)
    available = np.ones(len(features), dtype=bool)
    for step in range(1, min(k, len(features)) + 1):
        # Distance of the would-be mean to the target, for every candidate still available.
        gaps = np.linalg.norm(target - (total + features) / step, axis=1)
        gaps[~available] = np.inf
        best = int(np.argmin(gaps))
        chosen.append(best)
        available[best] = False
        total += features[best]
    return chosen

"""A bounded, class-balanced replay memory."""

from __future__ import annotations

import numpy as np


class ClassBalancedMemory:
    """Reservoir sampling within each class, under one shared capacity.

    The capacity is split evenly across the classes seen; each class keeps a uniform
    sample of its own stream (reservoir), so the memory never drifts towards the
    classes that happen to arrive most often. Samples are stored raw (unscaled),
    because the scaler moves as data arrives.
    """

    def __init__(self, *, capacity: int | None = None, fraction: float | None = None, seed: int = 0) -> None:
        if (capacity is None) == (fraction is None):
            raise ValueError("give exactly one of capacity (samples) or fraction (of samples seen)")
        if capacity is not None and capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        self.fixed_capacity = capacity
        self.fraction = fraction
        self.rng = np.random.default_rng(seed)
        self.buffers: dict[int, list[np.ndarray]] = {}
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

    def _quotas(self, capacity: int) -> dict[int, int]:
        classes = sorted(self.seen)
        base, extra = divmod(capacity, max(len(classes), 1))
        return {c: base + (1 if i < extra else 0) for i, c in enumerate(classes)}

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Offer every sample of an increment to the memory."""
        for c in np.unique(y):
            self.seen.setdefault(int(c), 0)
            self.buffers.setdefault(int(c), [])
        # Shares are set by the capacity once this increment is counted, so a memory
        # sized as a fraction of what was seen fills on the very first increment.
        quotas = self._quotas(self._capacity_at(sum(self.seen.values()) + len(y)))
        for row, label in zip(x, y, strict=True):
            c = int(label)
            self.seen[c] += 1
            buffer, quota = self.buffers[c], quotas[c]
            if len(buffer) < quota:
                buffer.append(row.copy())
            else:
                j = int(self.rng.integers(self.seen[c]))
                if j < quota:
                    buffer[j] = row.copy()
        # New classes shrink everyone's share: drop a uniform subset, which keeps
        # each remaining buffer a uniform sample of its class.
        for c, quota in quotas.items():
            buffer = self.buffers[c]
            if len(buffer) > quota:
                keep = np.sort(self.rng.choice(len(buffer), size=quota, replace=False))
                self.buffers[c] = [buffer[i] for i in keep]

    def samples(self, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """All stored (x, y), classes in ascending order."""
        xs = [np.stack(b) for c, b in sorted(self.buffers.items()) if b]
        ys = [np.full(len(b), c, dtype=np.int64) for c, b in sorted(self.buffers.items()) if b]
        if not xs:
            return np.zeros((0, n_features)), np.zeros(0, dtype=np.int64)
        return np.concatenate(xs), np.concatenate(ys)

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
            "rng_state": np.frombuffer(repr(self.rng.bit_generator.state).encode(), dtype=np.uint8),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.seen = {int(c): int(n) for c, n in zip(state["seen_classes"], state["seen_counts"], strict=True)}
        self.buffers = {c: [] for c in self.seen}
        for row, label in zip(state["x"], state["y"], strict=True):
            self.buffers[int(label)].append(np.asarray(row))
        if "rng_state" in state and len(state["rng_state"]):
            import ast

            self.rng.bit_generator.state = ast.literal_eval(bytes(state["rng_state"]).decode())

"""Anti-forgetting strategies: small objects that return things, never reach into the trainer.

The training loop calls these hooks, each optional in effect (``Naive`` implements
them as no-ops):

- ``begin(context)``: the increment starts; snapshot what it will be measured against
  (a teacher for distillation, anchor weights for EWC and interpolation);
- ``frozen(model)``: the names of the parameters the increment leaves as they are (freeze);
  the strategy only says so, the trainer keeps them out of the optimiser;
- ``training_data(x, y)``: what to train on (joint retraining returns everything seen);
- ``batch(x, y)``: the batch to step on (replay and dark replay append a memory batch);
- ``penalty(model, x, y, logits)``: an extra loss term (distillation, EWC, dark replay's recorded logits);
- ``end(model, x, y)``: learn from the finished increment (memory, Fisher information);
- ``finish(model)``: the model to keep (interpolation, bias correction), a new object or the same.

Strategies compose in a list (``Composite``); their state travels with the model version.
``build`` makes the list from the configured names through ``REGISTRY``, where each strategy
says how it is made from the config.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lepton.models.memory import ClassBalancedMemory
from lepton.models.network import MLP
from lepton.models.optim import adam
from lepton.models.settings import STRATEGIES, StrategyConfig


@dataclass
class Context:
    """What a strategy may know about the increment that starts."""

    model: MLP  # the warm-started network, before any step
    transform: Callable[[np.ndarray], np.ndarray]  # raw features -> network inputs
    old_classes: int  # classes the champion knew (0 for the first increment)
    device: torch.device
    generator: torch.Generator
    validation: tuple[np.ndarray, np.ndarray] | None = None  # raw x, y held out of training
    # Regression: network targets <-> the label's own units. The memory keeps raw values,
    # because the target's running scale moves as data arrives. None for classes.
    target: tuple[Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]] | None = None
    # The increment's training rows per class id, or per target bin (``target_bins``) for a numeric target;
    # rehearsed rows included, memory apart.
    class_rows: dict[int, int] | None = None

    @property
    def regression(self) -> bool:
        return self.target is not None


# Bins of the standardised target that a regression memory keeps balanced, like classes.
def target_bins(y: np.ndarray) -> np.ndarray:
    return np.clip(np.round(np.asarray(y, dtype=np.float64)), -3, 3).astype(np.int64) + 3


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class ids; mean squared error on a (standardised) numeric target."""
    if y.is_floating_point():
        return F.mse_loss(logits[:, 0].float(), y.float())
    return F.cross_entropy(logits, y)


class Strategy(Protocol):
    name: str

    def begin(self, context: Context) -> None: ...

    def frozen(self, model: nn.Module) -> set[str]: ...

    def training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None: ...

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None: ...

    def finish(self, model: MLP) -> MLP: ...

    def state_dict(self) -> dict[str, np.ndarray]: ...

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None: ...


class Naive:
    """Plain fine-tuning on the new increment: the baseline that forgets."""

    name = "naive"

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        """This strategy as ``config`` sets it up; ``replay`` is the memory built before it, if any."""
        return cls()

    def begin(self, context: Context) -> None:
        self.context = context

    def frozen(self, model: nn.Module) -> set[str]:
        return set()

    def training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x, y

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        return None

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None:
        return None

    def finish(self, model: MLP) -> MLP:
        return model

    def state_dict(self) -> dict[str, np.ndarray]:
        return {}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        return None


class Replay(Naive):
    """Rehearsal: every step on new data also steps on a batch of as many rows from the memory.

    Pairing batches (rather than appending the memory to the data) keeps the cost of an
    increment proportional to the new data alone, and gives old classes their weight per
    step however small the memory; which classes the memory batch draws, ``_row_weights`` says.
    """

    name = "replay"

    def __init__(self, *, n_features: int, capacity: int | None = None, fraction: float | None = None, selection: str = "herding", seed: int = 0) -> None:
        self.n_features = n_features
        self.memory = ClassBalancedMemory(capacity=capacity, fraction=fraction, selection=selection, seed=seed)
        self._x: torch.Tensor | None = None
        # Where the last batch() put its memory rows: (first memory row in the batch, memory indices).
        self.appended: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(**_memory_args(config, n_features=n_features, seed=seed))

    def begin(self, context: Context) -> None:
        super().begin(context)
        x, targets, y = self._samples()
        self._x = torch.from_numpy(context.transform(x)).to(context.device) if len(y) else None
        self._y = torch.from_numpy(targets).to(context.device)
        self._weights = torch.from_numpy(self._row_weights(y, context)) if len(y) else None

    def _row_weights(self, y: np.ndarray, context: Context) -> np.ndarray:
        """Sampling weight of each memory row: its class's share of a replay batch, split among the class's rows.

        The replay batch makes up what the new rows lack, so that the two halves of a step
        together follow the class mix of everything seen, this increment included: on a table
        whose mix holds, replay keeps that mix (even shares pulled an imbalanced table's
        fine-tunes towards its rare classes). The classes the new rows hold none of share what
        the mix asks for them evenly, as after new classes, where what is at stake is forgetting them.
        A numeric target's bins (``target_bins``) are classes here: the memory keeps them evenly, so
        that the tails are there to replay, but even draws would replay a skewed target's few
        extreme values as often as its common ones, and pull each fine-tune towards them.
        Without the increment's class (or bin) counts every class or bin is equally likely.
        """
        counts = np.bincount(y)
        share = (counts > 0).astype(np.float64)
        if context.class_rows is not None:
            size = max(len(counts), max(context.class_rows, default=-1) + 1, max(self.memory.seen, default=-1) + 1)
            counts = np.bincount(y, minlength=size)
            rows, seen = np.zeros(size), np.zeros(size)
            for c, n in context.class_rows.items():
                rows[c] = n
            for c, n in self.memory.seen.items():
                seen[c] = n
            everything = (seen + rows) / (seen + rows).sum()
            held = counts > 0
            present = held & (rows > 0)
            absent = held & ~present
            share = np.where(present, np.clip(2 * everything - rows / max(rows.sum(), 1), 0.0, None), 0.0)
            # The absent classes get what the mix asks for them (twice their share of everything),
            # evenly, apart from the present ones' shares: a class the increment holds too much of
            # cannot crowd them out of replay. The weights need not sum to one.
            share[absent] = 2 * everything[absent].sum() / max(absent.sum(), 1)
            if share.sum() <= 0:  # the new rows hold more than their share of every class
                share = np.where(held, everything, 0.0)
        return (share[y] / counts[y]).astype(np.float64)

    def _samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The memory as (raw x, network targets, class or bin ids)."""
        regression = getattr(self, "context", None) is not None and self.context.regression
        x, y = self.memory.samples(self.n_features + int(regression))
        if not regression:
            return x, y, y
        # A regression memory keeps the raw target as its last column.
        return x[:, :-1], self.context.target[0](x[:, -1]).astype(np.float32), y  # type: ignore[index]

    def _store(self, model: MLP | None, x: np.ndarray, y: np.ndarray, payload: np.ndarray | None = None) -> None:
        """Offer an increment's rows to the memory (raw targets and target bins for regression)."""
        embed = self._embedding(model) if model is not None else None
        if not self.context.regression:
            self.memory.update(x, y, embed=embed, payload=payload)
            return
        raw = self.context.target[1](y)  # type: ignore[index]
        rows_embed = (lambda rows: embed(rows[:, :-1])) if embed is not None else None
        self.memory.update(np.column_stack([x, raw]), target_bins(y), embed=rows_embed, payload=payload)

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._x is None or self._weights is None:
            return x, y
        idx = torch.multinomial(self._weights, len(y), replacement=True, generator=self.context.generator).to(self._x.device)
        self.appended = (len(y), idx)
        return torch.cat([x, self._x[idx]]), torch.cat([y, self._y[idx]])

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None:
        self._store(model, x, y)

    def _embedding(self, model: MLP) -> Callable[[np.ndarray], np.ndarray] | None:
        """Raw rows -> the model's features, what herding needs (None for reservoir sampling)."""
        if self.memory.selection != "herding":
            return None
        transform, device = self.context.transform, self.context.device

        def embed(rows: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model.features(torch.from_numpy(transform(rows)).to(device)).float().cpu().numpy()

        return embed

    def state_dict(self) -> dict[str, np.ndarray]:
        regression = getattr(self, "context", None) is not None and self.context.regression
        return {f"memory.{k}": v for k, v in self.memory.state_dict(self.n_features + int(regression)).items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        own = {k.removeprefix("memory."): v for k, v in state.items() if k.startswith("memory.")}
        if own:
            self.memory.load_state_dict(own)


def _memory_args(config: StrategyConfig, *, n_features: int, seed: int) -> dict:
    """The keyword arguments of a replay memory as ``config`` sizes it: a fixed capacity or a fraction of what was seen."""
    size = {"capacity": config.memory_size} if config.memory_size is not None else {"fraction": config.memory_fraction}
    return {"n_features": n_features, "selection": config.memory_selection, "seed": seed, **size}


def _shared_memory(replay: Replay | None, name: str) -> Replay:
    """The memory a strategy reads but does not fill: the one a replay strategy before it keeps."""
    if replay is None:
        raise ValueError(f"strategy {name!r} needs a memory: put replay, der (or joint) before it")
    return replay


class DarkReplay(Replay):
    """Dark experience replay (DER++): replay whose memory also keeps each sample's logits from when it entered.

    On the replayed rows, the logits are pulled towards the recorded ones (mean squared
    error, over the classes known when they were recorded) on top of the cross-entropy on
    their labels. The recorded logits carry what the network knew right after learning a
    sample, which a teacher taken from the latest champion has already partly forgotten.
    """

    name = "der"

    def __init__(self, *, weight: float = 0.5, **memory) -> None:
        super().__init__(**memory)
        self.weight = weight
        self._logits: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(weight=config.der_weight, **_memory_args(config, n_features=n_features, seed=seed))

    def begin(self, context: Context) -> None:
        super().begin(context)
        payload = self.memory.payload()
        self._logits = torch.from_numpy(payload).to(context.device) if self._x is not None and payload.shape[1] else None

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self._logits is None or self.appended is None:
            return None
        start, idx = self.appended
        return self.weight * recorded_logits_loss(logits[start : start + len(idx)], self._logits[idx])

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None:
        model.eval()
        with torch.no_grad():
            logits = model(torch.from_numpy(self.context.transform(x)).to(self.context.device)).float().cpu().numpy()
        self._store(model, x, y, payload=logits)


def recorded_logits_loss(logits: torch.Tensor, recorded: torch.Tensor) -> torch.Tensor:
    """Mean squared error against recorded logits; NaN marks a class unknown when they were recorded, and is skipped."""
    known = ~torch.isnan(recorded)
    out = logits[:, : recorded.shape[1]]
    gap = torch.where(known, out - torch.nan_to_num(recorded), torch.zeros_like(out))
    return (gap**2).sum() / known.sum().clamp(min=1)


class Distillation(Naive):
    """Learning without forgetting: keep the old classes' outputs close to the champion's (KL at temperature T)."""

    name = "distill"

    def __init__(self, *, weight: float = 1.0, temperature: float = 2.0, only_new_classes: bool = True) -> None:
        self.weight = weight
        self.temperature = temperature
        self.only_new_classes = only_new_classes
        self.teacher: MLP | None = None

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(weight=config.distill_weight, temperature=config.distill_temperature, only_new_classes=config.distill_only_new_classes)

    def begin(self, context: Context) -> None:
        super().begin(context)
        self.old = context.old_classes
        # Without new classes the teacher would only hold the model to the old data's
        # distribution and keep it from adapting to the new one (domain shift).
        grows = context.model.n_classes > self.old
        active = self.old > 0 and (grows or not self.only_new_classes)
        self.teacher = copy.deepcopy(context.model).eval() if active else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            target = self.teacher(x)[:, : self.old]
        if self.context.regression:
            return self.weight * F.mse_loss(logits[:, : self.old].float(), target.float())
        return self.weight * distillation_loss(logits[:, : self.old], target, self.temperature)

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None:
        self.teacher = None  # not part of the state: the next champion is the next teacher


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on softened outputs, scaled by T^2 so its gradient does not shrink with T."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True, reduction="batchmean") * t * t


class EWC(Naive):
    """Elastic weight consolidation with an online (running) Fisher estimate."""

    name = "ewc"

    def __init__(self, *, weight: float = 100.0, decay: float = 0.9) -> None:
        self.weight = weight
        self.decay = decay
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(weight=config.ewc_weight, decay=config.ewc_decay)

    def begin(self, context: Context) -> None:
        super().begin(context)
        device = context.device
        self._fisher = {k: v.to(device) for k, v in self.fisher.items()}
        self._anchor = {k: v.to(device) for k, v in self.anchor.items()}

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        if not self._fisher:
            return None
        total = torch.zeros((), device=x.device)
        for name, param in model.named_parameters():
            if name in self._fisher:
                fisher, anchor = self._fisher[name], self._anchor[name]
                # A grown head has rows the anchor never had: only the old ones are held.
                rows = tuple(slice(0, s) for s in anchor.shape)
                total = total + (fisher * (param[rows] - anchor) ** 2).sum()
        return 0.5 * self.weight * total

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None:
        """Fisher diagonal from per-sample squared gradients of the log-likelihood (empirical Fisher)."""
        device = self.context.device
        inputs = torch.from_numpy(self.context.transform(x)).to(device)
        targets = torch.from_numpy(y).to(device)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        fresh = {n: torch.zeros_like(p) for n, p in params.items()}
        model.eval()
        for i in range(len(targets)):
            model.zero_grad(set_to_none=True)
            task_loss(model(inputs[i : i + 1]), targets[i : i + 1]).backward()
            for n, p in params.items():
                if p.grad is not None:
                    fresh[n] += p.grad.detach() ** 2
        model.zero_grad(set_to_none=True)
        fresh = {n: f / max(len(targets), 1) for n, f in fresh.items()}
        merged = {}
        for n, f in fresh.items():
            old = self.fisher.get(n)
            if old is not None:
                grown = torch.zeros_like(f)
                grown[tuple(slice(0, s) for s in old.shape)] = old.to(f.device)
                f = f + self.decay * grown
            merged[n] = f.detach().cpu()
        self.fisher = merged
        self.anchor = {n: p.detach().cpu().clone() for n, p in params.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"fisher.{k}": v.numpy() for k, v in self.fisher.items()}
        state |= {f"anchor.{k}": v.numpy() for k, v in self.anchor.items()}
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.fisher = {k.removeprefix("fisher."): torch.from_numpy(v.copy()) for k, v in state.items() if k.startswith("fisher.")}
        self.anchor = {k.removeprefix("anchor."): torch.from_numpy(v.copy()) for k, v in state.items() if k.startswith("anchor.")}


class Freeze(Naive):
    """Partial update: parameters whose names start with one of ``layers`` are not trained.

    It only names them (``frozen``); the trainer keeps them out of the optimiser.
    """

    name = "freeze"

    def __init__(self, *, layers: tuple[str, ...] = ("features",)) -> None:
        self.layers = tuple(layers)
        self.keeping = False

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(layers=tuple(config.freeze_layers))

    def begin(self, context: Context) -> None:
        super().begin(context)
        # The first increment has nothing to keep: everything learns.
        self.keeping = context.old_classes > 0

    def frozen(self, model: nn.Module) -> set[str]:
        if not self.keeping:
            return set()
        return {name for name, _ in model.named_parameters() if name.startswith(self.layers)}


class Interpolation(Naive):
    """WiSE-FT: mix champion and fine-tuned weights, the mixing weight chosen on held-out data.

    ``alpha`` is the fine-tuned share: 0 gives back the champion, 1 the fine-tuned network.
    """

    name = "interpolate"

    def __init__(self, *, alphas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> None:
        self.alphas = tuple(alphas)
        self.chosen: float | None = None

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(alphas=tuple(config.interpolation_alphas))

    def begin(self, context: Context) -> None:
        super().begin(context)
        # The champion as it was: the head rows added for new classes are not its own.
        self.champion = _head_trimmed(context.model, context.old_classes) if context.old_classes else None

    def finish(self, model: MLP) -> MLP:
        if self.champion is None or self.context.validation is None:
            self.chosen = 1.0
            return model
        x, y = self.context.validation
        inputs = torch.from_numpy(self.context.transform(x))
        targets = torch.from_numpy(y)
        best, best_score = model, -float("inf")
        for alpha in self.alphas:
            mixed = interpolate(self.champion, model.cpu(), alpha)
            with torch.no_grad():
                out = mixed(inputs)
                # Accuracy on classes; negative squared error on a numeric target.
                score = -float(((out[:, 0] - targets) ** 2).mean()) if self.context.regression else float((out.argmax(dim=1) == targets).float().mean())
            if score > best_score + 1e-12:
                best, best_score, self.chosen = mixed, score, alpha
        return best


def _head_trimmed(model: MLP, n_classes: int) -> MLP:
    """A CPU copy of ``model`` whose head keeps only its first ``n_classes`` outputs."""
    trimmed = copy.deepcopy(model).cpu()
    head = nn.Linear(trimmed.head.in_features, n_classes)
    with torch.no_grad():
        head.weight.copy_(trimmed.head.weight[:n_classes])
        head.bias.copy_(trimmed.head.bias[:n_classes])
    trimmed.head = head
    trimmed.prototypes = trimmed.prototypes[:n_classes].clone()
    return trimmed


def interpolate(champion: MLP, tuned: MLP, alpha: float) -> MLP:
    """(1 - alpha) * champion + alpha * tuned, parameter by parameter; a grown head keeps its new rows as tuned."""
    mixed = copy.deepcopy(tuned)
    with torch.no_grad():
        old = dict(champion.named_parameters())
        for name, param in mixed.named_parameters():
            anchor = old[name]
            rows = tuple(slice(0, s) for s in anchor.shape)
            param[rows] = (1.0 - alpha) * anchor + alpha * param[rows]
    return mixed


class Joint(Replay):
    """Retrain from scratch on everything accepted so far: the reference, and a fallback."""

    name = "joint"

    def __init__(self, *, n_features: int, seed: int = 0) -> None:
        super().__init__(n_features=n_features, fraction=1.0, selection="reservoir", seed=seed)

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(n_features=n_features, seed=seed)

    def begin(self, context: Context) -> None:
        Naive.begin(self, context)

    def training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mx, my, _ = self._samples()
        return np.concatenate([mx, x]), np.concatenate([my, y])

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None:
        self._store(None, x, y)


class WeightAlign(Naive):
    """Bias correction: scale the new classes' head weights to the old classes' mean norm (weight aligning).

    Training on many new samples and few old ones inflates the new classes' logits;
    aligning the norms removes most of that bias at no training cost.
    """

    name = "align"

    def finish(self, model: MLP) -> MLP:
        old = self.context.old_classes
        if old == 0 or old >= model.n_classes:
            return model
        with torch.no_grad():
            norms = model.head.weight.norm(dim=1)
            gamma = norms[:old].mean() / norms[old:].mean()
            model.head.weight[old:] *= gamma
            model.head.bias[old:] *= gamma
        return model


# How many times the rows per class of new classes must exceed the known classes' for a linear head to lean towards them.
HEAD_BIAS_RATIO = 2.0


class NearestMean(Naive):
    """Classify by the nearest mean of the memory's exemplars in feature space (iCaRL).

    The class means come from the same few exemplars for every class, so new classes
    get no advantage from their numbers: the bias a linear head picks up disappears.
    That bias exists only where new classes arrive with many more rows each than the
    known classes have (in the increment and the memory together), as when an increment
    brings classes of its own. Otherwise (the first increment, data whose classes were all
    there from the start, a new class that turns up beside the known ones) the linear head,
    trained on all the data rather than on a few exemplars per class, classifies better
    and is kept: on a real table a few exemplars per class describe a class poorly.
    Once a model classifies by nearest mean, its successors do too.
    """

    name = "nme"

    def __init__(self, *, replay: Replay) -> None:
        self.replay = replay

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(replay=_shared_memory(replay, cls.name))

    def begin(self, context: Context) -> None:
        super().begin(context)
        # The warm-started network carries the champion's prototypes (all zero unless it classified by nearest mean).
        model = context.model
        self.active = not context.regression and context.old_classes > 0 and (
            bool(model.prototypes.any()) or (model.n_classes > context.old_classes and self._head_biased(context))
        )

    def _head_biased(self, context: Context) -> bool:
        """New classes bring over ``HEAD_BIAS_RATIO`` times the rows per class that the known ones have."""
        if context.class_rows is None:
            return True
        held = self.replay.memory.class_counts()
        old = [context.class_rows.get(c, 0) + held.get(c, 0) for c in range(context.old_classes)]
        new = [context.class_rows.get(c, 0) for c in range(context.old_classes, context.model.n_classes)]
        return float(np.mean(new)) > HEAD_BIAS_RATIO * float(np.mean(old))

    def finish(self, model: MLP) -> MLP:
        if not self.active:
            return model
        x, y = self.replay.memory.samples(self.replay.n_features)
        if len(y) == 0 or len(np.unique(y)) < model.n_classes:
            return model  # a class without exemplars: the linear head decides
        device = next(model.parameters()).device
        with torch.no_grad():
            embedding = F.normalize(model.features(torch.from_numpy(self.context.transform(x)).to(device)), dim=1)
            labels = torch.from_numpy(y).to(device)
            means = torch.stack([embedding[labels == c].mean(dim=0) for c in range(model.n_classes)])
            model.prototypes = F.normalize(means, dim=1)
        model.classifier = "nme"
        return model


class BalancedHead(Naive):
    """Bias correction: a short fine-tune of the head alone on the (class-balanced) memory."""

    name = "balance"

    def __init__(self, *, replay: Replay, epochs: int = 30, lr: float = 1e-4, batch_size: int = 32) -> None:
        self.replay, self.epochs, self.lr, self.batch_size = replay, epochs, lr, batch_size

    @classmethod
    def from_config(cls, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy:
        return cls(replay=_shared_memory(replay, cls.name))

    def finish(self, model: MLP) -> MLP:
        if self.context.old_classes == 0:
            return model
        x, y = self.replay.memory.samples(self.replay.n_features)
        if len(y) == 0:
            return model
        device = next(model.parameters()).device
        inputs = torch.from_numpy(self.context.transform(x)).to(device)
        targets = torch.from_numpy(y).to(device)
        optimiser = adam(list(model.head.parameters()), self.lr)
        model.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(targets), generator=self.context.generator).to(device)
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                loss = F.cross_entropy(model(inputs[idx]), targets[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
        model.eval()
        return model


class Composite(Naive):
    """Several strategies at once: data and batches pass through each in turn, penalties add up."""

    def __init__(self, parts: list[Strategy]) -> None:
        self.parts = parts
        self.name = "+".join(p.name for p in parts)

    def begin(self, context: Context) -> None:
        super().begin(context)
        for part in self.parts:
            part.begin(context)

    def frozen(self, model: nn.Module) -> set[str]:
        return set().union(*(part.frozen(model) for part in self.parts))

    def training_data(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        for part in self.parts:
            x, y = part.training_data(x, y)
        return x, y

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for part in self.parts:
            x, y = part.batch(x, y)
        return x, y

    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        terms = [t for part in self.parts if (t := part.penalty(model, x, y, logits)) is not None]
        return torch.stack(terms).sum() if terms else None

    def end(self, model: MLP, x: np.ndarray, y: np.ndarray) -> None:
        for part in self.parts:
            part.end(model, x, y)

    def finish(self, model: MLP) -> MLP:
        for part in self.parts:
            model = part.finish(model)
        return model

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"{p.name}.{k}": v for p in self.parts for k, v in p.state_dict().items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        for part in self.parts:
            prefix = f"{part.name}."
            part.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})

    def memory_samples(self, n_features: int, encode_target: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The replay memory's rows as (raw x, y), empty when no part keeps one: old data, e.g. for choosing a mixing weight.

        With ``encode_target`` (regression), y is the memory's raw target (its last column) encoded for the network.
        """
        replay = _first_memory(self.parts)
        if replay is None:
            return np.zeros((0, n_features)), np.zeros(0, dtype=np.float32 if encode_target is not None else np.int64)
        x, y = replay.memory.samples(n_features + int(encode_target is not None))
        if encode_target is not None:
            return x[:, :n_features], encode_target(x[:, n_features])
        return x, y


def _first_memory(parts: list[Strategy]) -> Replay | None:
    """The first part that keeps a replay memory (replay, der or joint): the one the others read."""
    return next((p for p in parts if isinstance(p, Replay)), None)


NAMES = STRATEGIES


class Factory(Protocol):
    """How ``build`` makes a strategy: from the config, the data's width, the seed and the memory built before it (if any)."""

    def __call__(self, config: StrategyConfig, *, n_features: int, seed: int, replay: Replay | None) -> Strategy: ...


# Every strategy under its configured name, in the order of NAMES.
REGISTRY: dict[str, Factory] = {
    cls.name: cls.from_config
    for cls in (Naive, Replay, DarkReplay, Distillation, EWC, Freeze, Interpolation, Joint, WeightAlign, BalancedHead, NearestMean)
}


# Strategies that correct a bias between classes: nothing to correct on a numeric target.
CLASS_ONLY = ("align", "balance")


def build(config: StrategyConfig, *, n_features: int, seed: int, regression: bool = False) -> Composite:
    """The strategies named in ``config.name`` (e.g. ``replay+distill+align``), in that order.

    Those that read a memory (nme, balance) share the one the first replay strategy before them keeps.
    On a numeric target, ``nme`` stands aside by its own rule (it acts only once classes
    arrived in different increments) and the class-only bias corrections refuse.
    """
    refused = [n for n in config.names if regression and n in CLASS_ONLY]
    if refused:
        raise ValueError(
            f"strategy {', '.join(map(repr, refused))} corrects a bias between classes and does not apply to a regression target; "
            "use der (the default), replay, distill, ewc, freeze, interpolate or joint"
        )
    parts: list[Strategy] = []
    for name in config.names:
        make = REGISTRY.get(name)
        if make is None:  # the config validates names; this guards direct callers
            raise ValueError(f"unknown strategy {name!r}; choose from {', '.join(NAMES)}")
        parts.append(make(config, n_features=n_features, seed=seed, replay=_first_memory(parts)))
    return Composite(parts)

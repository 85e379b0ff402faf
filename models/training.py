"""The training loop and the fine-tuning step of one increment."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from lepton.models import strategies
from lepton.models.bundle import Bundle
from lepton.models.loop import fit, intra_op_threads, keep_fixed, quiet_epochs, select_device, threads
from lepton.models.network import CNN_DEFAULTS, MLP, NetworkError, SmallCNN, build
from lepton.models.preprocessing import Encoding, Preprocessor
from lepton.models.settings import StrategyConfig, TrainConfig
from lepton.models.splits import holdout_mask


@dataclass
class TrainReport:
    """What a fine-tuning step did, for tracking."""

    losses: list[float]
    train_samples: int  # samples processed, memory batches and every epoch included
    new_samples: int
    memory_samples: int
    seconds: float
    device: str
    warm_start: bool
    strategy: str = ""
    classes: list = field(default_factory=list)
    lr: float = 0.0  # the learning rate it trained at
    threads: int = 0  # intra-op CPU threads of each training process
    transfer: dict | None = None  # a first network from another model's: the source, the way kept, each way's score
    best_epoch: int | None = None  # train.early_stopping: the epoch whose weights were kept
    epochs: int = 0  # the epochs it trained for (fewer than train.epochs when train.choose_epochs chose so)
    epoch_choice: EpochChoice | None = None  # train.choose_epochs: what the folds measured


def fine_tune(
    champion: Bundle | None,
    frame: pd.DataFrame,
    *,
    label: str,
    train: TrainConfig,
    strategy: StrategyConfig,
    rehearse: pd.DataFrame | None = None,
    encoding: Encoding | None = None,
    concept_change: bool = False,
    steady: bool = False,
    source: Bundle | None = None,
    transfer: str = "full",
) -> tuple[Bundle, TrainReport]:
    """The candidate: the champion (or a new network) fine-tuned on ``frame`` with the configured strategies.

    ``rehearse``: earlier rows (of known classes) trained on alongside ``frame`` but not
    offered to the memory or the scaler again, which have already counted them.
    ``encoding``: column kinds and task for a new network (inferred from ``frame`` when None);
    a warm start keeps the champion's. ``concept_change``: the labels now follow another rule, so
    the network and the strategies' state start afresh (the memory's labels and the weights encode
    the old rule); the preprocessing (scales, vocabularies, classes) carries on. ``steady``: the
    increment showed no drift, so a warm start without new classes trains at ``train.finetune_lr``.
    The champion itself is never modified: its weights are copied into a new network.
    ``source``: without a champion, another model whose feature layers (and column encoding) start
    the new network, under a fresh head; ``transfer`` says which of them train: ``frozen`` (none),
    ``partial`` (the last layer) or ``full``.
    """
    torch.manual_seed(train.seed)
    generator = torch.Generator().manual_seed(train.seed)
    if champion is not None:
        previous = champion.preprocessor
    elif source is not None:
        previous = transferred_preprocessor(source, encoding if encoding is not None else Encoding.infer(frame, label))
    else:
        previous = Preprocessor.create(encoding if encoding is not None else Encoding.infer(frame, label))
    preprocessor = previous.updated(frame, frame[label])
    regression = preprocessor.task == "regression"
    n_outputs, width = preprocessor.n_outputs, preprocessor.width

    plan = strategies.build(strategy, n_features=width, seed=train.seed, regression=regression)
    if champion is not None and champion.meta.get("strategy", {}).get("name") == strategy.name and not concept_change:
        plan.load_state_dict(champion.strategy_state)

    retrain = "joint" in strategy.names or champion is None or concept_change
    if retrain:
        # The first network takes the configured features; one retrained from scratch, the champion's.
        if champion is None and source is not None:
            arch = source.network.arch
        elif champion is None:
            factory, args = (None, None) if train.network == "mlp" else (train.network, train.network_args)
            if train.network == "cnn":
                args = {**CNN_DEFAULTS, **image_layout(preprocessor), **train.network_args}
            arch = {"hidden": train.widths(regression=regression), "factory": factory, "factory_args": args}
        else:
            arch = champion.network.arch
        network = build({**arch, "n_features": width, "n_classes": n_outputs, "classifier": "linear"})
        if champion is None and source is not None:
            network.features.load_state_dict(source.network.features.state_dict())
        elif champion is None and train.network_weights:
            start_from(network, train.network_weights)
        else:
            _quiet_unscaled_inputs(network, preprocessor)
    else:
        network = build({**champion.network.arch, "n_features": width, "classifier": "linear"})
        network.load_state_dict(champion.network.state_dict())
        network.expand_head(n_outputs)

    x_new = preprocessor.raw_matrix(frame)
    y_new = preprocessor.encode(frame[label])
    validation = None
    x_fit, y_fit = x_new, y_new
    if "interpolate" in strategy.names and strategy.validation_fraction > 0 and champion is not None:
        # Salted: unsalted, the validation buckets are holdout buckets, which the training rows never hold.
        held = holdout_mask(frame, strategy.validation_fraction, salt=VALIDATION_SALT)
        x_fit, y_fit = x_new[~held], y_new[~held]
        memory_x, memory_y = plan.memory_samples(width, preprocessor.encode if regression else None)
        validation = (np.concatenate([x_new[held], memory_x]), np.concatenate([y_new[held], memory_y]))

    early = None
    if retrain and validation is None and train.early_stopping > 0 and train.nproc == 1 and train.launcher == "spawn":
        # A new network on a few hundred noisy rows fits their noise within its epochs: the epoch that
        # predicts held-out rows best is kept. Salted apart from the holdout split and interpolate's.
        held = holdout_mask(frame, train.early_stopping, salt=EARLY_STOPPING_SALT)
        if held.sum() >= EARLY_STOPPING_ROWS and (~held).sum() >= train.batch_size:  # fewer rows: the epoch chosen would be noise
            early = (x_new[held], y_new[held])
            x_fit, y_fit = x_new[~held], y_new[~held]
    choice = None
    device = select_device(train.device)
    network.to(device)
    old_classes = 0 if champion is None or retrain else champion.network.n_classes
    target = (preprocessor.encode, preprocessor.decode) if regression else None
    x_train, y_train = x_fit, y_fit
    if rehearse is not None and len(rehearse):
        x_train = np.concatenate([x_fit, preprocessor.raw_matrix(rehearse)])
        y_train = np.concatenate([y_fit, preprocessor.encode(rehearse[label])])
    ids = strategies.target_bins(y_train) if regression else y_train
    class_rows = {int(c): int(n) for c, n in zip(*np.unique(ids, return_counts=True), strict=True)}
    plan.begin(strategies.Context(network, preprocessor.transform, old_classes, device, generator, validation, target, class_rows))
    x_raw, y = plan.training_data(x_train, y_train)
    started = time.perf_counter()
    # On data like what came before, a warm start refines the champion: at a new network's rate one
    # increment of 30 epochs moves it by about the gate's margin. Drift or new classes need the full rate.
    refine = steady and not retrain and train.finetune_lr is not None and n_outputs == champion.network.n_classes  # type: ignore[union-attr]
    lr = train.finetune_lr if refine else train.lr
    loop = dict(epochs=train.epochs, batch_size=train.batch_size, lr=lr, device=device, generator=generator, strategy=plan)
    cpu_threads = 1  # each data-parallel rank runs one
    # What the strategies keep fixed stays fixed until the increment has ended (fit and the ranks see to it
    # during training): what learns from the increment (EWC's Fisher information) sees only what trained.
    fixed = transfer_fixed(network, transfer) if champion is None and source is not None else set()
    with keep_fixed(network, plan.frozen(network) | fixed):
        if train.launcher == "torchrun":
            from lepton.models.distributed import fit_torchrun

            result = fit_torchrun(
                network, preprocessor.transform(x_raw), y, nproc=train.nproc, backend=train.backend,
                torchrun_args=train.torchrun_args, shared_dir=train.shared_dir, **loop,
            )
        elif train.nproc > 1:
            # Imported only when asked for: it spawns processes. It loads rank 0's weights into the network.
            from lepton.models.distributed import fit_ddp

            result = fit_ddp(network, preprocessor.transform(x_raw), y, nproc=train.nproc, backend=train.backend, **loop)
        else:
            cpu_threads = intra_op_threads(network, train.batch_size, train.threads) if device.type == "cpu" else torch.get_num_threads()
            with threads(cpu_threads):
                held_out = None if early is None else (preprocessor.transform(early[0]), early[1])
                x = preprocessor.transform(x_raw)
                # A new network on a few hundred rows of a table whose features say little fits their noise within
                # train.epochs: fewer epochs are kept when they score significantly better on folds of its rows.
                if retrain and train.choose_epochs and early is None and validation is None and source is None and not plan.frozen(network):
                    choice = choose_epochs(network, x, y, epochs=train.epochs, batch_size=train.batch_size, lr=lr, device=device, seed=train.seed)
                    loop["epochs"] = choice.epochs
                result = fit(network, x, y, validation=held_out, **loop)
        plan.end(network, x_new, y_new)
    network = plan.finish(network)
    seconds = time.perf_counter() - started
    network.cpu().eval()
    meta = {"label": label, "train": train.model_dump(), "strategy": strategy.model_dump()}
    candidate = Bundle(network, preprocessor, plan.state_dict(), meta)
    report = TrainReport(
        losses=result.losses,
        train_samples=result.samples,
        new_samples=len(y_fit),
        # Per epoch, everything stepped on beyond the new rows came from memory (or, for joint and rehearsal, from earlier data).
        memory_samples=result.samples // max(loop["epochs"], 1) - len(y_fit),
        seconds=seconds,
        device=str(device),
        warm_start=not retrain,
        strategy=strategy.name,
        classes=list(preprocessor.classes),
        lr=lr,
        threads=cpu_threads,
        best_epoch=result.best_epoch,
        epochs=loop["epochs"],
        epoch_choice=choice,
    )
    return candidate, report


TRANSFERS = ("frozen", "partial", "full")

# train.choose_epochs: the folds a new network's training rows are cut into (each trains on the others and scores
# the one held out after every epoch); beyond EPOCH_ROWS rows the configured epochs are kept (a few thousand rows
# no longer fit their noise within them, and the folds would cost three trainings more). EPOCH_Z: standard errors
# by which the best epoch's paired gain over the last must clear zero (one of train.epochs chosen: a high bar).
EPOCH_FOLDS = 4
EPOCH_ROWS = 2_000
EPOCH_Z = 2.0


@dataclass
class EpochChoice:
    """What ``choose_epochs`` measured: the mean held-out score after each epoch (accuracy, or minus the absolute
    error of the standardised target), the epochs kept, and what the folds cost."""

    epochs: int
    scores: list[float]
    rows: int
    samples: int

    def summary(self, configured: int) -> str:
        best, last = self.scores[self.epochs - 1], self.scores[-1]
        if self.epochs == configured:
            return f"kept all {configured} epochs (on {EPOCH_FOLDS} folds of its {self.rows} rows, no fewer scored significantly better)"
        return (f"trained {self.epochs} of {configured} epochs: on {EPOCH_FOLDS} folds of its {self.rows} rows, {self.epochs} epochs scored "
                f"{best:.3g} on the rows held out against {last:.3g} after {configured} (train.choose_epochs)")


def choose_epochs(network: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int, lr: float, device: torch.device,
                  seed: int) -> EpochChoice:
    """How many epochs a new network (``network``, as initialised) trains for on ``x``, ``y``: ``epochs``, unless fewer
    score significantly better on rows it did not train on.

    ``x``, ``y`` are cut into ``EPOCH_FOLDS`` folds at random (seeded; the copies of a repeated row fall apart, as
    the holdout split's do); a copy of the network trains on all but one for ``epochs`` and scores the one held out
    after every epoch, so each row is scored once per epoch. The best epoch (ties: the later) is kept when its paired
    gain over the last clears zero by ``EPOCH_Z`` standard errors; the network and the caller's generator are untouched.
    """
    n = len(y)
    if n > EPOCH_ROWS or n < 2 * EPOCH_FOLDS or epochs < 2:
        return EpochChoice(epochs, [], n, 0)
    fold = np.random.default_rng(seed).permutation(n) % EPOCH_FOLDS
    parts, samples = [], 0
    for k in range(EPOCH_FOLDS):
        held = fold == k
        trial = copy.deepcopy(network)
        with quiet_epochs():
            result = fit(trial, x[~held], y[~held], epochs=epochs, batch_size=batch_size, lr=lr, device=device,
                         generator=torch.Generator().manual_seed(seed + 1 + k), watch=(x[held], y[held]))
        parts.append(result.watched)
        samples += result.samples
    scores = np.concatenate(parts, axis=1)  # epochs x rows
    means = scores.mean(axis=1)
    best = max(range(epochs), key=lambda e: (means[e], e))
    gain = scores[best] - scores[-1]
    spread = gain.std(ddof=1) / np.sqrt(n) if n > 1 else 0.0
    chosen = best + 1 if gain.mean() - EPOCH_Z * spread > 0 else epochs
    return EpochChoice(chosen, [float(v) for v in means], n, samples)


def transferred_preprocessor(source: Bundle, encoding: Encoding) -> Preprocessor:
    """The source's column encoding and running statistics (what its feature layers learnt to read), with no classes
    or target yet: this workspace's labels get a head of their own. Refused when the columns differ."""
    theirs = {c: source.preprocessor.kinds.get(c, "numeric") for c in source.preprocessor.used}
    ours = {c: k for c, k in encoding.kinds.items() if k not in ("identifier", "ignore")}
    differences = [f"{c} ({k}) missing here" for c, k in theirs.items() if c not in ours]
    differences += [f"{c} ({k}) not in the source" for c, k in ours.items() if c not in theirs]
    differences += [f"{c} is {ours[c]} here, {k} in the source" for c, k in theirs.items() if c in ours and ours[c] != k]
    differences += [f"{c}'s images are {encoding.shapes.get(c)} here, {source.preprocessor.shapes.get(c)} in the source"
                    for c in encoding.shapes if source.preprocessor.shapes.get(c) != list(encoding.shapes.get(c, []))]
    if differences or list(theirs) != list(ours):
        shown = differences[:6] + ([f"and {len(differences) - 6} more"] if len(differences) > 6 else [])
        raise NetworkError(
            f"train.transfer_from: the source model's feature layers read other columns than this table's: {'; '.join(shown) or 'the same columns in another order'}"
        )
    return source.preprocessor._replace(classes=[], target=(0.0, 0.0, 0.0), target_low=None, target_log=None, task=encoding.task)


def transfer_fixed(network: MLP, transfer: str) -> set[str]:
    """The feature parameters a transfer keeps fixed: all (frozen), all but the last layer's (partial), none (full)."""
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {', '.join(TRANSFERS)}, not {transfer!r}")
    names = [f"features.{n}" for n, _ in network.features.named_parameters()]
    if transfer == "full" or not names:
        return set()
    if transfer == "frozen":
        return set(names)
    # The last layer: the module that owns the last parameter, all of whose parameters keep training.
    last = names[-1].rsplit(".", 1)[0]
    return {n for n in names if n.rsplit(".", 1)[0] != last}


# Folds a first increment's training rows are cut into to judge the transfers against a network from scratch:
# each way trains on all folds but one and is scored on that one, for every fold while the rows are few.
TRANSFER_FOLDS = 4
VALIDATION_SALT = 1  # interpolate's validation split of the training rows, independent of the holdout split
EARLY_STOPPING_SALT = 2  # a new network's early-stopping rows, independent of both
EARLY_STOPPING_ROWS = 30  # fewest held-out rows that choose an epoch
FOLD_ROWS = 2_000  # beyond this many rows one fold judges: its scores are steady enough, and training costs more


@dataclass
class TransferChoice:
    """What ``choose_transfer`` tried and kept: each way's score on the rows it was not trained on (accuracy, or R²)."""

    chosen: str  # frozen, partial, full, or scratch
    scores: dict[str, float]
    validation_rows: int


def _folds(frame: pd.DataFrame) -> np.ndarray:
    """A fold number per row, from a hash of its values (the same rows fall alike in every run)."""
    return (pd.util.hash_pandas_object(frame, index=False).to_numpy() // 7) % TRANSFER_FOLDS


def choose_transfer(source: Bundle, frame: pd.DataFrame, *, label: str, train: TrainConfig, strategy: StrategyConfig,
                    encoding: Encoding | None = None, ways: tuple[str, ...] = TRANSFERS) -> TransferChoice:
    """A network from scratch and each way of transferring ``source``, scored on rows of ``frame`` they did not train on.

    Transfer can hurt (features learnt on other classes, or from another sensor, may fit the new
    task worse than a few epochs from scratch), so it is measured, not assumed: with few rows every
    fold of ``TRANSFER_FOLDS`` is held out in turn (each row judged once), else one. A transfer is
    kept only when it scores above scratch; ties between transfers go to the one that trains most.
    """
    from lepton.models.evaluation import score

    fold = _folds(frame)
    judged = range(TRANSFER_FOLDS) if len(frame) <= FOLD_ROWS else range(1)
    order = ("scratch", *reversed(ways))
    hits: dict[str, list[np.ndarray]] = {way: [] for way in order}
    rows = 0
    for k in judged:
        held = fold == k
        if held.all() or not held.any():
            continue
        rows += int(held.sum())
        for way in order:
            with quiet_epochs():
                model, _ = fine_tune(None, frame[~held], label=label, train=train, strategy=strategy, encoding=encoding,
                                     source=None if way == "scratch" else source, transfer="full" if way == "scratch" else way)
            scored = score(model, frame[held], label)
            hits[way].append(-scored.errors if scored.errors is not None else scored.correct.astype(float))
    if not rows:
        return TransferChoice("scratch", {}, 0)
    scores = {way: float(np.concatenate(parts).mean()) for way, parts in hits.items()}
    best = max(scores, key=lambda way: scores[way])  # the first of the best in ``order``: scratch wins a tie
    return TransferChoice(best, scores, rows)


def start_from(network: MLP, path: str) -> None:
    """Load a state_dict saved from feature layers of the same shape into a new network's features (``train.network_weights``)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling raises many kinds; each means: not a state_dict saved with torch.save
        raise NetworkError(f"train.network_weights={path!r}: not a state_dict saved with torch.save ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise NetworkError(f"train.network_weights={path!r}: holds a {type(state).__name__}, not a state_dict (save module.state_dict())")
    try:
        network.features.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:]) or str(err)
        raise NetworkError(f"train.network_weights={path!r}: they do not fit train.network's feature layers: {detail}") from None


def image_layout(preprocessor: Preprocessor) -> dict[str, Any]:
    """Where the first image column's pixels sit among the inputs, for ``train.network: cnn``."""
    start = 0
    for column in preprocessor.used:
        if preprocessor.kinds.get(column) == "image":
            return {"image_start": start, "image_shape": list(preprocessor.shapes[column])}
        start += preprocessor._width(column)
    raise NetworkError("train.network=cnn needs an image column (encoded PNG or JPEG bytes), and this table has none; use train.network=mlp")


def _quiet_unscaled_inputs(network: MLP, preprocessor: Preprocessor) -> None:
    """Zero a new network's first-layer weights on indicator and one-hot inputs.

    A missing indicator or category slot that the first increment never lit would
    otherwise keep random weights and shift predictions the day a consumer lights it;
    from zero it starts as plain imputation (or the shared slot) and learns once data has it.
    """
    mask = torch.from_numpy(~preprocessor.scaled)
    if isinstance(network.features, SmallCNN):
        # Its hidden layer reads the convolutions, then the inputs beside the image (indicators among them).
        cnn = network.features
        beside = torch.cat([mask[:cnn.start], mask[cnn.start + cnn.size:]])
        layer = cnn.mix[0]
        with torch.no_grad():
            layer.weight[:, layer.in_features - len(beside):][:, beside] = 0.0
        return
    # The first linear layer that reads the inputs (a factory's may have none: then nothing is zeroed).
    first = next((m for m in network.features.modules() if isinstance(m, nn.Linear)), network.head)
    if first.in_features != len(mask):
        return
    with torch.no_grad():
        first.weight[:, mask] = 0.0

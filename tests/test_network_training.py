"""The MLP, the training loop and fine-tuning across class-incremental digits."""

from __future__ import annotations

import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from lepton.config import StrategyConfig, TrainConfig
from lepton.models.bundle import Bundle
from lepton.models.datasets import LABEL, class_incremental
from lepton.models.evaluation import score
from lepton.models.loop import fit, select_device
from lepton.models.network import MLP
from lepton.models.splits import split
from lepton.models.training import fine_tune

CPU = torch.device("cpu")


def blobs(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated Gaussian blobs in 4 dimensions, float32 features and int64 labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n).astype(np.int64)
    x = rng.normal(size=(n, 4)) + np.where(y[:, None] == 1, 3.0, -3.0)
    return x.astype(np.float32), y


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every test here runs on one torch thread (see conftest)."""


def trained_losses(*, init_seed: int, fit_seed: int, device: torch.device = CPU) -> tuple[list[float], MLP]:
    torch.manual_seed(init_seed)
    model = MLP(n_features=4, n_classes=2, hidden=(16,))
    x, y = blobs()
    result = fit(model, x, y, epochs=15, batch_size=32, lr=1e-2, device=device, generator=torch.Generator().manual_seed(fit_seed))
    # Without a strategy every epoch passes each sample through once.
    assert result.samples == 15 * len(y)
    return result.losses, model


def test_expand_head_keeps_known_outputs_and_adds_new_ones() -> None:
    """Growing the head keeps old rows of weight and bias byte-identical, so old logits do not move."""
    torch.manual_seed(0)
    model = MLP(n_features=4, n_classes=3, hidden=(8,))
    x = torch.randn(5, 4)
    weight, bias = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    before = model(x).detach()
    model.expand_head(5)
    assert model.n_classes == 5 and model.arch["n_classes"] == 5
    assert model.head.weight.shape == (5, 8) and model.head.bias.shape == (5,)
    assert torch.equal(model.head.weight[:3], weight)
    assert torch.equal(model.head.bias[:3], bias)
    after = model(x).detach()
    assert after.shape == (5, 5)
    # The same weights give the same logits, up to the last bit: a 5-wide product may take another BLAS kernel than a
    # 3-wide one, and on some CPUs it rounds differently (bit-equal on one machine, 1 ulp off on another).
    torch.testing.assert_close(after[:, :3], before, rtol=1e-6, atol=1e-7)
    # The grown head is still trainable as one parameter.
    assert model.head.weight.requires_grad and model.head.weight.is_leaf


def test_expand_head_grows_prototypes_and_falls_back_to_the_linear_head() -> None:
    """Growing keeps the known class means, adds zero rows for the new classes and predicts with the head again."""
    torch.manual_seed(0)
    model = MLP(n_features=4, n_classes=3, hidden=(8,), classifier="nme")
    with torch.no_grad():
        model.prototypes.copy_(torch.nn.functional.normalize(torch.randn(3, 8), dim=1))
    prototypes = model.prototypes.clone()
    x = torch.randn(5, 4)
    # Before growing, nme predictions are negative scaled distances to the prototypes, not the head's logits.
    assert not torch.equal(model.predict_logits(x), model(x))
    model.expand_head(5)
    assert model.prototypes.shape == (5, 8)
    assert torch.equal(model.prototypes[:3], prototypes)
    assert torch.equal(model.prototypes[3:], torch.zeros(2, 8))
    assert model.classifier == "linear" and model.arch["classifier"] == "linear"
    assert torch.equal(model.predict_logits(x), model(x))
    # The grown buffer is what a checkpoint saves.
    assert model.state_dict()["prototypes"].shape == (5, 8)


def test_expand_head_refuses_to_shrink() -> None:
    """Asking for fewer classes than the head has raises ValueError and leaves the head alone."""
    model = MLP(n_features=4, n_classes=3, hidden=(8,))
    with pytest.raises(ValueError, match="cannot shrink"):
        model.expand_head(2)
    assert model.n_classes == 3


def test_fit_makes_the_loss_fall_on_a_separable_problem() -> None:
    """On two separated blobs the last epoch's loss is under half the first's and the data is learned."""
    losses, model = trained_losses(init_seed=0, fit_seed=0)
    assert len(losses) == 15
    assert losses[-1] < losses[0] / 2
    x, y = blobs()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(dim=1).numpy()
    assert (predicted == y).mean() == 1.0
    assert not model.training, "fit leaves the model in eval mode"


def test_fit_is_deterministic_for_a_seed() -> None:
    """The same initialisation and seed give identical per-epoch losses; another shuffling seed does not."""
    first, _ = trained_losses(init_seed=0, fit_seed=0)
    second, _ = trained_losses(init_seed=0, fit_seed=0)
    other, _ = trained_losses(init_seed=0, fit_seed=1)
    assert first == second
    assert first != other


def test_fit_keeps_the_epoch_best_on_held_out_rows() -> None:
    """With held-out rows, fit keeps the weights of the epoch with the lowest loss on them: on labels that are
    noise the network memorises its rows, that epoch is an early one, and it is exactly the model the same
    training stopped there would have given."""
    from lepton.models.loop import validation_loss

    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 4)).astype(np.float32)
    y = rng.integers(0, 2, size=160).astype(np.int64)  # no rule to learn: only noise to fit
    train, held = slice(0, 120), slice(120, 160)

    def trained(epochs: int, validation=None):
        torch.manual_seed(0)
        model = MLP(n_features=4, n_classes=2, hidden=(64, 64))
        result = fit(model, x[train], y[train], epochs=epochs, batch_size=16, lr=1e-2, device=CPU,
                     generator=torch.Generator().manual_seed(0), validation=validation)
        return model, result

    kept, result = trained(30, validation=(x[held], y[held]))
    last, plain = trained(30)
    assert plain.best_epoch is None and len(result.losses) == 30 and result.samples == plain.samples  # every epoch still runs
    assert result.best_epoch is not None and result.best_epoch < 10
    xv, yv = torch.from_numpy(x[held]), torch.from_numpy(y[held])
    assert validation_loss(kept, xv, yv) < validation_loss(last, xv, yv) - 0.1
    stopped, _ = trained(result.best_epoch)
    for name, tensor in kept.state_dict().items():
        assert torch.equal(tensor, stopped.state_dict()[name]), name
    assert not kept.training


def test_early_stopping_holds_out_rows_of_a_new_network_only() -> None:
    """train.early_stopping trains a new network on the rest of its rows and says which epoch it kept; a warm start
    trains on every row, as before."""
    frame = pd.DataFrame(np.random.default_rng(1).normal(size=(400, 3)), columns=["a", "b", "c"])
    frame["y"] = np.where(frame["a"] + 0.3 * np.random.default_rng(2).normal(size=400) > 0, "up", "down")
    config = TrainConfig(epochs=8, early_stopping=0.2)
    first, report = fine_tune(None, frame, label="y", train=config, strategy=StrategyConfig(name="naive"))
    assert report.best_epoch is not None and 1 <= report.best_epoch <= 8
    assert 280 <= report.new_samples <= 360  # about 80% of 400 rows trained on
    _, warm = fine_tune(first, frame, label="y", train=config, strategy=StrategyConfig(name="naive"))
    assert warm.best_epoch is None and warm.new_samples == 400
    _, plain = fine_tune(None, frame, label="y", train=TrainConfig(epochs=8), strategy=StrategyConfig(name="naive"))
    assert plain.best_epoch is None and plain.new_samples == 400


def _noise(n: int, seed: int) -> pd.DataFrame:
    """Rows whose features say nothing of the label: 80% of labels "none", as flares on most days."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 6)), columns=list("abcdef"))
    frame["y"] = rng.choice(["none", "c", "m"], p=[0.8, 0.1, 0.1], size=n)
    return frame


def _accuracy(model: Bundle, frame: pd.DataFrame) -> float:
    return float(score(model, frame, "y").correct.mean())


def test_a_new_network_trains_fewer_epochs_where_more_fit_noise() -> None:
    """train.choose_epochs: on rows whose features say nothing, 30 epochs fit the noise of 240 rows; the folds find
    fewer that score significantly better, the network trains for those, and predicts unseen rows better for it."""
    rows, unseen = _noise(240, 3), _noise(600, 4)
    chosen, report = fine_tune(None, rows, label="y", train=TrainConfig(epochs=30), strategy=StrategyConfig(name="naive"))
    choice = report.epoch_choice
    assert choice is not None and len(choice.scores) == 30 and choice.rows == 240
    assert report.epochs == choice.epochs < 30
    assert choice.scores[choice.epochs - 1] > choice.scores[-1]
    assert report.train_samples == report.epochs * 240  # the folds' trainings are counted apart
    assert choice.samples == 30 * 3 * 240  # each row trains in three folds of four, every epoch
    assert f"trained {report.epochs} of 30 epochs" in choice.summary(30)
    full, full_report = fine_tune(None, rows, label="y", train=TrainConfig(epochs=30, choose_epochs=False), strategy=StrategyConfig(name="naive"))
    assert full_report.epochs == 30 and full_report.epoch_choice is None
    commonest = float((unseen["y"] == "none").mean())
    assert _accuracy(chosen, unseen) > _accuracy(full, unseen) and _accuracy(chosen, unseen) >= commonest - 0.01


def test_a_new_network_keeps_its_epochs_where_they_learn_and_a_warm_start_never_chooses() -> None:
    """Where the features tell the label, no fewer epochs score better: the network is the one train.epochs gives,
    weight for weight (the folds leave the network and its generator untouched). A fine-tune keeps train.epochs."""
    frame = pd.DataFrame(np.random.default_rng(1).normal(size=(300, 3)), columns=["a", "b", "c"])
    frame["y"] = np.where(frame["a"] - frame["b"] + 0.2 * np.random.default_rng(2).normal(size=300) > 0, "up", "down")
    config = TrainConfig(epochs=12, hidden=[32])
    kept, report = fine_tune(None, frame, label="y", train=config, strategy=StrategyConfig(name="naive"))
    assert report.epoch_choice is not None and report.epochs == 12
    assert "kept all 12 epochs" in report.epoch_choice.summary(12)
    plain, _ = fine_tune(None, frame, label="y", train=config.model_copy(update={"choose_epochs": False}), strategy=StrategyConfig(name="naive"))
    for name, tensor in kept.network.state_dict().items():
        assert torch.equal(tensor, plain.network.state_dict()[name]), name
    _, warm = fine_tune(kept, frame, label="y", train=config, strategy=StrategyConfig(name="naive"))
    assert warm.epoch_choice is None and warm.epochs == 12


def test_choose_epochs_leaves_many_rows_to_the_configured_epochs() -> None:
    """Beyond EPOCH_ROWS training rows the configured epochs stand without a trial training."""
    from lepton.models.training import EPOCH_ROWS, choose_epochs

    x, y = blobs(EPOCH_ROWS + 1)
    choice = choose_epochs(MLP(n_features=4, n_classes=2, hidden=(8,)), x, y, epochs=30, batch_size=32, lr=1e-3, device=CPU, seed=0)
    assert choice.epochs == 30 and choice.scores == [] and choice.samples == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_select_device_without_cuda() -> None:
    """Without CUDA, auto and cpu pick the CPU and an explicit cuda request raises RuntimeError."""
    assert select_device("auto") == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        select_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_on_cuda() -> None:
    """Mixed-precision training on CUDA also makes the loss fall and returns the model ready to predict."""
    assert select_device("auto").type == "cuda"
    losses, model = trained_losses(init_seed=0, fit_seed=0, device=torch.device("cuda"))
    assert losses[-1] < losses[0] / 2
    assert next(model.parameters()).device.type == "cuda"


# Fine-tuning on digits: increments of classes (0, 1), (2, 3), (4, 5).


@pytest.fixture(scope="module")
def digits() -> list[tuple]:
    """(train, holdout) of the first three class-incremental digit increments."""
    return [split(frame, 0.2) for frame in class_incremental()[:3]]


def run_chain(digits: list[tuple], strategy: str) -> list[Bundle]:
    """Fine-tune increment by increment, each candidate becoming the next champion."""
    bundles: list[Bundle] = []
    champion = None
    for train, _ in digits:
        champion, report = fine_tune(champion, train, label=LABEL, train=TrainConfig(epochs=10), strategy=StrategyConfig(name=strategy))
        assert report.warm_start == bool(bundles)
        bundles.append(champion)
    return bundles


@pytest.fixture(scope="module")
def replay_chain(digits: list[tuple]) -> list[Bundle]:
    return run_chain(digits, "replay")


def test_replay_remembers_the_first_increment(digits: list[tuple], replay_chain: list[Bundle]) -> None:
    """After three increments with replay, the model still scores > 0.8 on the first increment's holdout."""
    final = replay_chain[-1]
    assert final.preprocessor.classes == [0, 1, 2, 3, 4, 5]
    assert score(final, digits[0][1], LABEL).accuracy > 0.8
    assert score(final, digits[2][1], LABEL).accuracy > 0.8
    # The memory travelled with each version and grew with what was seen.
    assert len(replay_chain[0].strategy_state["replay.memory.y"]) < len(final.strategy_state["replay.memory.y"])


def test_naive_fine_tuning_forgets_the_first_increment(digits: list[tuple]) -> None:
    """Without replay the same run scores < 0.3 on the first increment's holdout: catastrophic forgetting."""
    final = run_chain(digits, "naive")[-1]
    assert score(final, digits[0][1], LABEL).accuracy < 0.3
    assert score(final, digits[2][1], LABEL).accuracy > 0.8


def test_fine_tune_leaves_the_champion_untouched(digits: list[tuple], replay_chain: list[Bundle]) -> None:
    """The champion's weights, preprocessing and replay memory are unchanged by fine-tuning from it."""
    champion = replay_chain[0]
    weights = {k: v.detach().clone() for k, v in champion.network.state_dict().items()}
    memory = {k: v.copy() for k, v in champion.strategy_state.items()}
    preprocessing = champion.preprocessor.to_dict()
    candidate, _ = fine_tune(champion, digits[1][0], label=LABEL, train=TrainConfig(epochs=2), strategy=StrategyConfig(name="replay"))

    after = champion.network.state_dict()
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[k], weights[k]) for k in weights)
    assert champion.network.n_classes == 2 and candidate.network.n_classes == 4
    assert champion.strategy_state.keys() == memory.keys()
    assert all(np.array_equal(champion.strategy_state[k], memory[k]) for k in memory)
    assert champion.preprocessor.to_dict() == preprocessing
    # The candidate did train: its shared weights moved away from the champion's.
    assert not torch.equal(candidate.network.features[0].weight, weights["features.0.weight"])


def test_bundle_save_load_predicts_identically(tmp_path, digits: list[tuple], replay_chain: list[Bundle]) -> None:
    """A bundle saved and loaded gives bit-identical probabilities and the same labels, state and meta."""
    bundle = replay_chain[-1]
    loaded = Bundle.load(bundle.save(tmp_path / "bundle"))
    holdout = digits[0][1]
    np.testing.assert_array_equal(loaded.predict_proba(holdout), bundle.predict_proba(holdout))
    np.testing.assert_array_equal(loaded.predict(holdout), bundle.predict(holdout))
    assert loaded.network.arch == bundle.network.arch
    assert loaded.preprocessor.classes == bundle.preprocessor.classes
    assert loaded.strategy_state.keys() == bundle.strategy_state.keys()
    assert all(np.array_equal(loaded.strategy_state[k], bundle.strategy_state[k]) for k in bundle.strategy_state)
    assert loaded.meta == bundle.meta


def test_a_steady_increment_refines_at_the_fine_tuning_rate() -> None:
    """Warm start, no drift, no new classes: train.finetune_lr; new classes, drift, or a new network: train.lr."""
    parts = class_incremental()
    first, second = parts[0].head(120), parts[0].iloc[120:240]
    train = TrainConfig(epochs=1, hidden=[16])
    champion, report = fine_tune(None, first, label=LABEL, train=train, strategy=StrategyConfig(name="replay"), steady=True)
    assert report.lr == train.lr == 1e-3  # a new network
    _, steady = fine_tune(champion, second, label=LABEL, train=train, strategy=StrategyConfig(name="replay"), steady=True)
    assert steady.lr == train.finetune_lr == 3e-4
    _, drifted = fine_tune(champion, second, label=LABEL, train=train, strategy=StrategyConfig(name="replay"), steady=False)
    assert drifted.lr == 1e-3
    _, grown = fine_tune(champion, parts[1].head(120), label=LABEL, train=train, strategy=StrategyConfig(name="replay"), steady=True)
    assert grown.lr == 1e-3  # new classes: the head has to learn them
    _, plain = fine_tune(champion, second, label=LABEL, train=TrainConfig(epochs=1, hidden=[16], finetune_lr=None), strategy=StrategyConfig(name="replay"), steady=True)
    assert plain.lr == 1e-3


def test_a_new_network_takes_the_task_default_width_unless_configured() -> None:
    """train.hidden null: two layers of 256 for classes, one of 128 for a numeric target; a configured width wins, a warm start keeps the champion's."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=80), "b": rng.normal(size=80)})
    numeric = frame.assign(y=frame.a * 3.5 + rng.normal(size=80))
    classes = frame.assign(y=np.where(frame.a > 0, "up", "down"))
    train = TrainConfig(epochs=1)
    regressor, _ = fine_tune(None, numeric, label="y", train=train, strategy=StrategyConfig(name="replay"))
    classifier, _ = fine_tune(None, classes, label="y", train=train, strategy=StrategyConfig(name="replay"))
    assert regressor.regression and regressor.network.hidden == (128,)
    assert not classifier.regression and classifier.network.hidden == (256, 256)
    configured, _ = fine_tune(None, numeric, label="y", train=TrainConfig(epochs=1, hidden=[32, 8]), strategy=StrategyConfig(name="replay"))
    assert configured.network.hidden == (32, 8)
    warm, _ = fine_tune(configured, numeric, label="y", train=train, strategy=StrategyConfig(name="replay"))
    assert warm.network.hidden == (32, 8)


def test_small_training_runs_on_one_thread_and_restores_torch_threads() -> None:
    """train.threads null: the default network (a small step) trains on one intra-op thread; a configured count is used; torch's own setting comes back."""
    from lepton.models.loop import THREAD_WORK, intra_op_threads

    before = torch.get_num_threads()
    small = MLP(n_features=64, n_classes=10, hidden=(256, 256))
    assert intra_op_threads(small, 32) == 1
    wide = MLP(n_features=64, n_classes=10, hidden=(2048, 2048))
    assert 32 * sum(p.numel() for p in wide.parameters()) >= THREAD_WORK and intra_op_threads(wide, 32) == before
    assert intra_op_threads(small, 32, configured=3) == 3
    part = class_incremental()[0].head(60)
    _, report = fine_tune(None, part, label=LABEL, train=TrainConfig(epochs=1, hidden=[16], device="cpu"), strategy=StrategyConfig(name="naive"))
    assert report.threads == 1 and torch.get_num_threads() == before
    _, configured = fine_tune(None, part, label=LABEL, train=TrainConfig(epochs=1, hidden=[16], device="cpu", threads=2), strategy=StrategyConfig(name="naive"))
    assert configured.threads == 2 and torch.get_num_threads() == before


def test_holdouts_scored_in_one_pass_score_as_each_alone(digits: list[tuple], replay_chain: list[Bundle]) -> None:
    """Predicting every holdout at once gives each holdout the scores it gets alone (classes and a numeric target)."""
    from lepton.models.evaluation import score_holdouts

    model = replay_chain[-1]
    holdouts = {f"h{i}": test for i, (_, test) in enumerate(digits)} | {"empty": digits[0][1].iloc[:0]}
    together = score_holdouts(model, holdouts, LABEL, new_id="h2")
    for key, frame in holdouts.items():
        alone = score(model, frame, LABEL)
        assert np.array_equal(together[key].correct, alone.correct)
        assert together[key].accuracy == pytest.approx(alone.accuracy, nan_ok=True)
        assert together[key].macro_f1 == pytest.approx(alone.macro_f1, nan_ok=True)
    assert together["h2"].log_loss == pytest.approx(score(model, holdouts["h2"], LABEL).log_loss)
    assert together["h0"].log_loss is None  # what tracking records comes from the new holdout only

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=120), "b": rng.normal(size=120)})
    frame["y"] = 3 * frame["a"] - frame["b"] + rng.normal(scale=0.1, size=120)
    regressor, _ = fine_tune(None, frame, label="y", train=TrainConfig(epochs=3), strategy=StrategyConfig(name="naive"))
    parts = {"x": frame.iloc[:50], "z": frame.iloc[50:]}
    for key, scored in score_holdouts(regressor, parts, "y", new_id="z").items():
        alone = score(regressor, parts[key], "y")
        assert np.allclose(scored.errors, alone.errors)
        assert scored.r2 == pytest.approx(alone.r2)


ASIDE_SCRIPT = r"""
import os, sys, time
import numpy as np, pandas as pd, torch
from lepton.config import StrategyConfig, TrainConfig
from lepton.models import aside
from lepton.models.training import fine_tune

frame = pd.DataFrame(np.random.default_rng(1).normal(size=(600, 4)), columns=list("abcd"))
frame["y"] = np.where(frame["a"] - frame["b"] > 0, "up", "down")
config, strategy = TrainConfig(epochs=6), StrategyConfig(name="naive")
assert aside.why_not(torch.device("cpu")) is None, aside.why_not(torch.device("cpu"))
child = aside.start(fine_tune, None, frame, label="y", train=config, strategy=strategy)
# The parent trains meanwhile (as the run fine-tunes): from now on it may fork no training child.
here, _ = fine_tune(None, frame.iloc[::-1].reset_index(drop=True), label="y", train=config, strategy=strategy)
assert "has trained already" in aside.why_not(torch.device("cpu"))
(bundle, report), why = child.result(60)
assert why is None, why
again, again_report = fine_tune(None, frame, label="y", train=config, strategy=strategy)
same = all(torch.equal(a, b) for a, b in zip(bundle.network.state_dict().values(), again.network.state_dict().values(), strict=True))
print("same", same, report.losses == again_report.losses, bundle.predict(frame.head(5)).tolist())
failing = aside.start(lambda: 1 / 0)
print("failed", failing.result(60))
print("late", aside.start(time.sleep, 120).result(1))  # killed past its time
slow = aside.start(time.sleep, 120)  # a run that fails before it asks for the result: the child goes with the object
pid = slow.pid
del slow
try:
    os.kill(pid, 0)
    print("left running")
except ProcessLookupError:
    print("abandoned")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2, reason="trains aside on Linux with two cores or more")
def test_a_training_aside_in_a_forked_process_gives_what_training_here_gives(tmp_path) -> None:
    """drift.action=compete trains its rival in a forked process beside the fine-tune. In a process that has not
    trained yet (a fresh one, as `lepton run`), the child's network is the one this process would have trained, weight
    for weight; a failure in the child comes back as a reason; one past its time, or whose result is never asked for,
    is killed; once this process has trained, it forks no more."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", ASIDE_SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("same True True ["), lines
    assert lines[1] == "failed (None, 'ZeroDivisionError: division by zero')", lines
    assert lines[2] == "late (None, 'it ran past 1 s')", lines
    assert lines[3] == "abandoned", lines

"""The settings of the learning code: training, strategies, gate and drift, each a typed section.

They live here, beside the code that reads them, so that nothing in ``lepton.models`` depends on
the rest of Lepton; ``lepton.config`` gathers them with the pipeline's own sections into the one
configuration that ``lepton.yaml`` holds.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A new network's hidden widths when train.hidden is null. Measured with `lepton bench tables`: on a
# numeric target two layers of 256 fit the noise of a first increment of ~80 rows (diabetes: R² -0.49 on
# its holdout, ridge 0.15) where one layer of 128 generalises (0.25), and cars' prequential MAE fell from
# 3.42 to 3.17; classes keep the width the digits benchmarks were measured with.
# A registered model as train.transfer_from names it: models:/NAME@ALIAS or models:/NAME/VERSION.
MODEL_URI = r"models:/[A-Za-z0-9][A-Za-z0-9_.\-]*(@[A-Za-z0-9_\-]+|/\d+)"

CLASSIFICATION_HIDDEN = (256, 256)
REGRESSION_HIDDEN = (128,)


class TrainConfig(Section):
    """How the candidate is fine-tuned."""

    epochs: int = Field(30, ge=1, description="Passes over each increment's training data.")
    batch_size: int = Field(32, ge=1, description="Samples per optimisation step.")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of a new network.")
    finetune_lr: float | None = Field(
        3e-4, gt=0, description="Adam learning rate when fine-tuning the champion on an increment that shows no drift and brings no new classes: it refines what was learnt instead of moving the model by the gate's margin; drift or new classes train at train.lr; null: always train.lr."
    )
    hidden: list[int] | None = Field(
        None,
        min_length=1,
        description="Hidden layer widths of a new network; null: [256, 256] for classes, [128] for a numeric target (one layer overfits less on the few hundred noisy rows a regression table often starts with).",
    )
    network: str = Field(
        "mlp",
        pattern=r"^(mlp|cnn|[A-Za-z_][\w.]*:[A-Za-z_]\w*)$",
        description="Feature layers of a new network: mlp (train.hidden wide); cnn (convolutions over the image column, the other inputs beside them; train.network_args may set channels, default [32, 64], and hidden, default 128); or 'module:function', your factory importable from the workspace, called with n_features and train.network_args, returning an nn.Module from (batch, n_features) to (batch, width); Lepton adds the head. A warm start keeps the champion's.",
    )
    network_args: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the train.network factory (JSON values); stored with the model version.")
    network_weights: str | None = Field(
        None,
        description="A state_dict of the feature layers (torch.save of network.features', e.g. a backbone trained elsewhere), relative to the workspace: a new network starts from it; versions keep their own weights, so nothing needs the file afterwards.",
    )
    transfer_from: str | None = Field(
        None,
        pattern=rf"^{MODEL_URI}$",
        description="A registered model (models:/NAME@champion or models:/NAME/VERSION) whose feature layers start the first network, with a fresh head for this workspace's labels; its columns must be this table's.",
    )
    transfer_registry: str | None = Field(None, description="Tracking URI of the registry holding train.transfer_from (another workspace's: sqlite:////path/.lepton/mlflow.db); default this workspace's.")
    transfer: Literal["auto", "frozen", "partial", "full"] = Field(
        "auto",
        description="How the transferred feature layers train on the first increment: frozen, partial (only their last layer), full; auto trains these and a network from scratch on 75% of the training rows, keeps the best on the other 25%, and trains it on all of them.",
    )
    early_stopping: float = Field(
        0.0, ge=0, lt=1,
        description="Share of a new network's training rows held out to pick its best epoch (the weights with the lowest loss on them are kept); 0: the last epoch's. Single-process training only.",
    )
    choose_epochs: bool = Field(
        True,
        description="A new network (the first, or one retrained from scratch) on at most 2,000 rows trains for fewer than train.epochs when fewer score significantly better on 4 folds of its rows (3 more trainings on 75% of them): on a table whose features say little, 30 epochs fit the noise of a few hundred rows. false: always train.epochs.",
    )
    retrain_rows: int | None = Field(
        100_000, ge=1,
        description="The most recent accepted training rows a network retrained from scratch learns (drift.action=compete, gate.fallback=retrain), so that its cost stops growing with the history; null: all of them.",
    )
    seed: int = Field(0, description="Seed for initialisation, shuffling and memory sampling.")
    threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op CPU threads of single-process training; null: 1 when a step is small (parameters x batch_size under 1e8, the default network included: as fast quiet, 2.8x faster beside other work), else torch's default. Data-parallel ranks use 1 each.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present, else the CPU.")
    nproc: int = Field(
        1,
        ge=1,
        description="Data-parallel worker processes on this machine (DistributedDataParallel); each steps on batch_size samples, so the effective batch is nproc x batch_size.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend when nproc > 1: auto is nccl on CUDA, gloo on the CPU.")
    launcher: Literal["spawn", "torchrun"] = Field(
        "spawn",
        description="How data-parallel ranks start: spawn (nproc processes on this machine) or torchrun (nproc per node, other nodes join through torchrun_args).",
    )
    torchrun_args: list[str] = Field(
        default_factory=list,
        description="Extra torchrun arguments, e.g. ['--nnodes=2', '--node-rank=0', '--rdzv-backend=c10d', '--rdzv-endpoint=head:29500']; none means --standalone (launcher=torchrun).",
    )
    shared_dir: str | None = Field(None, description="Folder every node reads, for the job and rank 0's result (launcher=torchrun across nodes); default a temporary folder.")

    def widths(self, *, regression: bool) -> tuple[int, ...]:
        """The hidden widths a new network gets: ``hidden``, or the task's default."""
        if self.hidden is not None:
            return tuple(self.hidden)
        return REGRESSION_HIDDEN if regression else CLASSIFICATION_HIDDEN

    @field_validator("torchrun_args")
    @classmethod
    def _options_only(cls, value: list[str]) -> list[str]:
        # The script and its arguments are Lepton's; only torchrun's own options may be added.
        bad = [a for a in value if not a.startswith("-")]
        if bad:
            raise ValueError(f"torchrun_args takes torchrun options only (starting with '-'), not {', '.join(map(repr, bad))}; write --opt=value")
        return value


STRATEGIES = ("naive", "replay", "der", "distill", "ewc", "freeze", "interpolate", "joint", "align", "balance", "nme")


class StrategyConfig(Section):
    """The anti-forgetting strategy: one or several, joined with '+', applied in that order."""

    name: str = Field(
        "der+nme",
        description="'+'-joined strategies from: naive, replay, der, distill, ewc, freeze, interpolate, joint, align, balance, nme.",
    )
    memory_fraction: float = Field(0.1, ge=0, le=1, description="Replay memory size as a fraction of the training samples seen.")
    memory_size: int | None = Field(None, ge=0, description="Replay memory size in samples; overrides memory_fraction.")
    memory_selection: Literal["herding", "reservoir"] = Field("herding", description="How replay picks what to keep within a class: herding (closest to the class mean) or reservoir (uniform).")
    der_weight: float = Field(0.5, ge=0, description="Weight of matching the logits recorded with each memory sample when it entered the memory (der).")
    distill_weight: float = Field(1.0, ge=0, description="Weight of the distillation loss (distill).")
    distill_temperature: float = Field(2.0, gt=0, description="Softmax temperature of distillation (distill).")
    distill_only_new_classes: bool = Field(True, description="Distil only on increments that bring new classes; under domain shift the teacher would hold the model back (distill).")
    ewc_weight: float = Field(100.0, ge=0, description="Strength of the EWC penalty (ewc).")
    ewc_decay: float = Field(0.9, ge=0, le=1, description="How much of the previous Fisher estimate EWC keeps (ewc).")
    freeze_layers: list[str] = Field(["features"], description="Parameter name prefixes not trained after the first increment (freeze).")
    interpolation_alphas: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=1, description="Fine-tuned shares tried when mixing with the champion's weights (interpolate).")
    validation_fraction: float = Field(0.1, ge=0, lt=1, description="Share of an increment's training rows held out to choose the mixing weight (interpolate only).")

    @field_validator("name")
    @classmethod
    def _known(cls, value: str) -> str:
        names = [n.strip() for n in value.split("+")]
        unknown = [n for n in names if n not in STRATEGIES]
        if unknown or not names:
            raise ValueError(f"unknown strategy {', '.join(map(repr, unknown))}; choose from {', '.join(STRATEGIES)} joined with '+'")
        return "+".join(names)

    @field_validator("interpolation_alphas")
    @classmethod
    def _shares(cls, value: list[float]) -> list[float]:
        if any(not 0.0 <= a <= 1.0 for a in value):
            raise ValueError("mixing weights must lie in [0, 1]")
        return value

    @property
    def names(self) -> list[str]:
        return self.name.split("+")


class GateConfig(Section):
    """When a candidate may replace the champion."""

    policy: Literal["non_inferior", "superior"] = Field(
        "non_inferior",
        description="non_inferior: promote a candidate not worse than the champion on the new holdout by more than gate.margin (at the bootstrap's confidence); superior: it must gain more than gate.min_improvement.",
    )
    margin: float = Field(0.02, ge=0, description="Non-inferiority margin on accuracy: how much worse than the champion's (at the bootstrap's confidence) a candidate may be.")
    mae_margin: float = Field(0.1, ge=0, description="Non-inferiority margin for a numeric target, as a share of the champion's MAE (per-row errors vary more than correctness).")
    min_accuracy: float = Field(0.5, ge=0, le=1, description="Floor: the candidate's accuracy on the new holdout and on all holdouts (classification).")
    min_r2: float = Field(0.0, le=1, description="Floor: the candidate's R² on the new holdout and on all holdouts (regression), on the scale the target is learnt on (a log scale for a skewed never-negative target).")
    max_forgetting: float = Field(0.1, ge=0, le=1, description="Largest loss on earlier holdouts allowed against the champion: accuracy points, or a share of its MAE for a numeric target.")
    min_improvement: float = Field(0.0, description="policy=superior: least gain on the new holdout over the champion, at the bootstrap's confidence (a share of its MAE for a numeric target).")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence of the paired bootstrap on the new holdout.")
    bootstrap_samples: int = Field(1000, ge=100, description="Resamples of the paired bootstrap.")
    min_holdout_rows: int = Field(30, ge=1, description="Fewer rows in the new holdout and the bootstrap says nothing: the point estimate decides, and the reasons say so.")
    fallback: Literal["retrain", "none"] = Field(
        "retrain",
        description="When the fine-tuned candidate fails the gate (and drift brought no retrained rival already): retrain trains a new network on every accepted training row (the most recent train.retrain_rows) and gates it instead when it does better on the holdouts the gate judges; none leaves the champion as it is.",
    )
    champion_holdouts: Literal["pool", "skip"] = Field(
        "pool",
        description="The earlier holdouts the champion was chosen on (it passed the gate against its predecessor there): pool compares on them too; skip leaves them out of the non-inferiority comparison, where its lead is partly the luck it was chosen for, at the price of fewer rows (forgetting is still judged on them).",
    )
    old_holdouts: str = Field(
        "since_change",
        pattern=r"^(all|since_change|recent \d+)$",
        description="Earlier holdouts forgetting is judged on: all, since_change (from the last detected concept change on) or 'recent N'.",
    )


class DriftConfig(Section):
    """How an increment is compared with the accepted history before it is accepted, and what drift does."""

    enabled: bool = Field(True, description="Measure drift of every increment after the first.")
    action: Literal["warn", "block", "replay", "joint", "compete"] = Field(
        "compete",
        description="On drift: compete (when the drift hurts the champion or the fine-tuned candidate fails the gate, a new network trained on all accepted data competes with it; the better on the holdouts the gate judges goes to the gate), warn (report and carry on), block (reject and quarantine, exit 2), replay (rehearse earlier rows with this increment) or joint (retrain on all accepted data).",
    )
    p_value: float = Field(0.01, gt=0, lt=1, description="Family-wise significance: a test flags drift when its p-value passes Holm's correction over all of the increment's tests at this level.")
    psi_threshold: float = Field(0.25, gt=0, description="Population stability index at or above which a categorical feature or the label drifts (categorical_test=psi).")
    categorical_test: Literal["chi2", "psi"] = Field("chi2", description="Test for categorical features and the label distribution: chi-square or PSI.")
    categorical: list[str] = Field([], description="Numeric features to compare as categories (codes); non-numeric features always are.")
    min_share: float = Field(0.0, ge=0, le=1, description="Share of tested features that must drift (at least one) for the increment to count as drifted; a drifted label always counts.")
    min_rows: int = Field(20, ge=2, description="Fewest rows each side of a comparison needs; fewer and the increment is not tested.")
    reference_cap: int = Field(5000, ge=10, description="Most history rows compared (a deterministic sample matching the increment's class mix); also caps the increment's rows.")
    replay_share: float = Field(1.0, gt=0, description="action=replay: earlier training rows rehearsed with this increment, per new training row.")

"""Dynamic clipping for GRPO: the clip range shrinks as training goes, and the loss really uses it.

The schedule (paper, section 3.3)::

    B_s = eps * prod_{i=1..s} (1 - i/T)        eps = 0.2, T = total optimizer steps

a product of decays (0.191, 0.175, 0.152, 0.125, ... for T = 23) that reaches 0 at s = T.

:class:`DynamicClipGRPOTrainer` is TRL's ``GRPOTrainer`` with one override: before every loss computation it
sets the trainer's ``epsilon_low`` / ``epsilon_high`` (which TRL 1.16 reads inside ``_compute_loss``, on every
process) to the schedule's value for the current optimizer step, logs it (``clip/epsilon_low``,
``clip/epsilon_high``) and appends ``(step, low, high)`` to :attr:`clip_history`.

Where this departs from the paper and the released code, and why:

* The released code changed the value on the driver process only, so the training workers never saw it;
  here the attribute the loss reads is set on the trainer itself, in every process, right before the loss.
  ``tests/training/test_clipping.py`` reads the bounds of TRL's own ``torch.clamp`` call at every step.
* Step numbering: ``s`` is the 1-based number of the optimizer step being computed
  (``state.global_step + 1``), so the first update uses B_1 = 0.191 (T = 23) and the last one B_T = 0.
  Several loss calls inside one optimizer step (gradient accumulation, several minibatches per rollout)
  share one ``s``. On resume the schedule continues from the checkpoint's ``global_step``.
* ``T`` defaults to the trainer's ``max_steps`` (1 epoch of ~23 steps in the paper); pass ``clip_total_steps``
  to fix it otherwise.
* With ``epsilon_high`` set apart from ``epsilon`` (asymmetric, DAPO style), each bound is decayed by the
  same factor; the paper's setting is symmetric (both 0.2).
* Clipping acts only on off-policy ratios. With TRL's defaults (one rollout per optimizer step,
  ``num_iterations=1``) the ratio is exactly 1 and the clip range changes nothing; the paper's setting
  (rollout batch 512, actor batch 256: two updates per rollout) corresponds to ``steps_per_generation`` =
  2 x ``gradient_accumulation_steps`` in TRL, where it matters.
* Only the PPO-style loss types (``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``, ``luspo``) use a symmetric ratio
  clip; other ``loss_type`` values are refused while dynamic clipping is on.
"""

from __future__ import annotations

from typing import Any

from guardreasoner_vl.errors import InvalidInputError, require
from guardreasoner_vl.training.common import lazy_classes, trl_subclass

__all__ = [  # noqa: F822 (DynamicClipGRPOTrainer is built on first access, see __getattr__)
    "DynamicClipGRPOTrainer",
    "clip_decay",
    "dynamic_clip_epsilon",
    "dynamic_clip_schedule",
]

CLIPPED_LOSS_TYPES = frozenset({"grpo", "bnpo", "dr_grpo", "dapo", "luspo"})
"""TRL loss types whose objective clamps the ratio to ``[1 - epsilon_low, 1 + epsilon_high]``."""


def clip_decay(step: int, total_steps: int) -> float:
    """The decay factor ``prod_{i=1..step} (1 - i/total_steps)`` (1 at step 0, 0 from step ``total_steps`` on).

    Example:
        >>> clip_decay(0, 10), clip_decay(1, 10), clip_decay(10, 10)
        (1.0, 0.9, 0.0)
    """
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise InvalidInputError(f"step must be an integer >= 0, got {step!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise InvalidInputError(f"total_steps must be an integer >= 1, got {total_steps!r}")
    if step >= total_steps:
        return 0.0
    factor = 1.0
    for i in range(1, step + 1):
        factor *= 1.0 - i / total_steps
    return factor


def dynamic_clip_epsilon(step: int, total_steps: int, eps: float = 0.2) -> float:
    """The clip range at optimizer step ``step`` of ``total_steps``: ``eps * prod_{i=1..step}(1 - i/T)``.

    Example:
        >>> [round(dynamic_clip_epsilon(s, 23), 3) for s in range(1, 5)]
        [0.191, 0.175, 0.152, 0.125]
        >>> dynamic_clip_epsilon(23, 23)
        0.0
    """
    if not isinstance(eps, int | float) or eps < 0:
        raise InvalidInputError(f"eps must be a number >= 0, got {eps!r}")
    return float(eps) * clip_decay(step, total_steps)


def dynamic_clip_schedule(total_steps: int, eps: float = 0.2) -> list[float]:
    """``[B_1, ..., B_T]``: the clip range of every optimizer step of a run."""
    return [dynamic_clip_epsilon(s, total_steps, eps) for s in range(1, total_steps + 1)]


@trl_subclass
def _clip_trainer_class() -> type:
    trl = require("trl", "train", feature="dynamic clipping")
    base = trl.GRPOTrainer

    class DynamicClipGRPOTrainer(base):  # type: ignore[misc, valid-type]
        """``trl.GRPOTrainer`` whose loss uses the dynamic clip range B_s at every optimizer step.

        Takes every ``GRPOTrainer`` argument, plus:

        Args:
            clip_total_steps: T of the schedule (default: the run's ``max_steps``).
            dynamic_clipping: set False to train with TRL's fixed clip range (same class, for comparisons).

        Attributes:
            clip_history: ``(step, epsilon_low, epsilon_high)`` for every training loss call, in order.
        """

        def __init__(
            self, *args: Any, clip_total_steps: int | None = None, dynamic_clipping: bool = True, **kwargs: Any
        ) -> None:
            super().__init__(*args, **kwargs)
            if clip_total_steps is not None and (not isinstance(clip_total_steps, int) or clip_total_steps < 1):
                raise InvalidInputError(f"clip_total_steps must be a positive integer, got {clip_total_steps!r}")
            if dynamic_clipping and self.loss_type not in CLIPPED_LOSS_TYPES:
                raise InvalidInputError(
                    f"dynamic clipping needs a clipped-ratio loss ({', '.join(sorted(CLIPPED_LOSS_TYPES))}); "
                    f"loss_type is {self.loss_type!r}"
                )
            self.clip_total_steps = clip_total_steps
            self.dynamic_clipping = dynamic_clipping
            self.base_epsilon_low: float = float(self.epsilon_low)
            self.base_epsilon_high: float = float(self.epsilon_high)
            self.clip_history: list[tuple[int, float, float]] = []

        def current_clip_step(self) -> tuple[int, int]:
            """``(s, T)`` for the optimizer step being computed."""
            total = self.clip_total_steps or int(self.state.max_steps or 0)
            if total < 1:
                raise InvalidInputError("dynamic clipping needs the number of training steps; pass clip_total_steps")
            return int(self.state.global_step) + 1, total

        def _compute_loss(self, model: Any, inputs: Any) -> Any:
            if self.dynamic_clipping and self.model.training:
                step, total = self.current_clip_step()
                factor = clip_decay(step, total)
                self.epsilon_low = self.base_epsilon_low * factor
                self.epsilon_high = self.base_epsilon_high * factor
                self.clip_history.append((step, self.epsilon_low, self.epsilon_high))
                metrics = self._metrics["train"]
                metrics["clip/epsilon_low"].append(self.epsilon_low)
                metrics["clip/epsilon_high"].append(self.epsilon_high)
            return super()._compute_loss(model, inputs)

    return DynamicClipGRPOTrainer


# The trainer subclasses trl.GRPOTrainer, so it is built on first use: importing this module stays light.
__getattr__ = lazy_classes(__name__, DynamicClipGRPOTrainer=_clip_trainer_class)

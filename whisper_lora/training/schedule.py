"""Learning-rate schedule that decays to zero when the training budget ends, in steps or in minutes."""

from __future__ import annotations

LR_DECAYS = ("budget", "steps")


class BudgetSchedule:
    """Linear warm-up, then linear decay to 0 at whichever budget ends first.

    ``max_steps=None`` means no step cap (``max_minutes`` alone ends the run). ``decay="steps"`` decays
    over ``max_steps`` only (the classic linear schedule: a run cut short by ``max_minutes`` stops at a
    high learning rate, and without a step cap the rate stays at its peak). ``decay="budget"`` also
    counts the share of ``max_minutes`` spent, so a time-capped run ends with its learning rate near 0,
    whatever the machine's speed. The training loop sets ``minutes`` before each step; the factor is a
    pure function of (step, minutes), and checkpoints record the minutes, so a resumed run continues
    the same budget. Used as the ``lr_lambda`` of ``torch.optim.lr_scheduler.LambdaLR``.
    """

    def __init__(
        self, warmup_steps: int, max_steps: int | None, max_minutes: float | None = None, decay: str = "budget"
    ):
        self.warmup_steps, self.max_steps, self.max_minutes, self.decay = warmup_steps, max_steps, max_minutes, decay
        self.minutes = 0.0  # training minutes spent so far (set by the loop)

    def progress(self, step: int) -> float:
        """Share of the budget spent at ``step`` (0 to 1), counted after warm-up for steps."""
        by_steps = (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps) if self.max_steps else 0.0
        by_time = self.minutes / self.max_minutes if self.decay == "budget" and self.max_minutes else 0.0
        return min(1.0, max(0.0, by_steps, by_time))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return step / max(1, self.warmup_steps)
        return max(0.0, 1.0 - self.progress(step))

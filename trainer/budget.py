"""A wall-clock budget for a run: ``budget_minutes`` fixes how many epochs it trains.

A CPU preset promises "finishes in 12 minutes", but a fixed epoch count cannot keep that promise:
the same 2-core VM ran the same recipe's epochs in 31 s on one day and 36-41 s on another. With
``budget_minutes`` set, ``epochs`` is the most epochs the run may train, and the trainer fixes the
number once, at the last epoch boundary of the warm-up (``due``: after epoch
``max(1, floor(optim.warmup_epochs))``, or earlier once a quarter of the budget is spent), from what
it measured on this machine:

- the steady step time of the epoch just trained (its first steps, loader start-up and allocator
  warm-up, are left out) times the steps per epoch, plus the epoch-end work measured at the
  previous boundary (checkpoint, reconstructions; not the evals),
- the online evals' feature pass, timed on a few batches of the eval loader (its start-up and its
  steady batches apart) and scaled to ``evals.max_train + evals.max_val`` images, times
  ``EVAL_MARGIN`` for the probe and kNN,
- the time already spent since the trainer started (model, loaders, the epochs so far),

and picks the largest number of epochs whose estimate stays within ``SAFETY`` of the budget
(evals every ``evals.every`` epochs and after the last). ``plan_epochs`` is that arithmetic, pure.

Why it does not change the trajectory: during the warm-up the lr is linear in the fractional epoch
and does not depend on the total, and the decision comes no later than the warm-up's last epoch
boundary; so a budgeted run that fixed E epochs trains exactly what a run with ``epochs=E`` trains
(bit for bit on CPU with ``deterministic: true``). With ``optim.warmup_epochs < 1`` the first
epoch's cosine was computed for the maximum and the rest follows E (a small kink; the trainer says
so). The first epoch alone is a poor clock: on the 2-core VM it ran 10-15% slower than the next
(loader start, allocator warm-up), which is why the decision waits for the warm-up's end.

The machine's speed can drift after the decision (in one hour the 2-core VM's epochs ranged from 36
to 54 s, in stretches of several epochs), so the trainer keeps watching (``Watch``, ``replan``): at
every epoch boundary from the second after the decision it projects the end from the epochs' average
time since the decision and the latest eval's time. When that projection overruns the budget itself
(not the ``SAFETY`` share) it plans again, downwards, to the most epochs that fit ``SAFETY``. When
the epochs run faster than assumed, so that at least ``GROW_SHARE`` of the planned epochs more fit
``SAFETY`` (and ``epochs``, the maximum, allows) even if every remaining epoch ran ``GROW_MARGIN``
slower than the average so far, and at least ``GROW_AFTER`` epochs back that average, it plans again,
upwards: a 60-minute run that decided on 41.3 s epochs and then ran them in 36.5 s on average ended
at 52 minutes with 81 epochs; replayed with its own epoch times, the upward re-plans (after epochs
36, 45, 59, 71 and 85, two epochs each) take it to 91 epochs and 57.7 minutes.

Why growth is the cautious direction: a shrink keeps the budget's promise, a growth only spends
slack, and a growth followed by a shrink moves the cosine twice for nothing. A first version grew as
soon as two epochs' average fitted ``SAFETY``; on the demo's 4.4-minute budget that band (8 s) is
less than one epoch, and a fresh-clone demo went 14 -> 15 -> 14 epochs on timing noise. Over 24
recorded runs on the 2-core VM (``benchmarks/epoch_times.json``), the epochs after any three ran
more than 9% slower than those three in 1 window of 20 (more than 7.5% in 1 of 10); hence a 10%
margin after three epochs. ``python -m benchmarks.budget_replay`` replays those runs' patterns,
rotated and at three paces, through the three presets: a growth later undone by a shrink fell from
74 / 163 / 518 of 1,602 replays (demo / 12 / 60 minutes) to 0 / 3 / 0, for 0.8 / 1.7 / 0.9 points
less of the budget used on average. On every rotation of the 60-minute run's own epoch times
(``tests/test_trainer_budget.py``) the first version swung in 43 of 76 (one ended past the hour);
now none does.
A re-plan moves the cosine from that point (the lr steps down a little when the run shortens, up a
little when it grows; the trainer says so), so only a run that was never re-planned equals
``epochs=E`` exactly.

The number is saved in every checkpoint; a resume keeps it (the interruption is not counted against
the budget, and the resumed process does not watch: its clock did not see the start). A resume that
changes ``budget_minutes`` or ``epochs`` (``--allow-change``) drops it: a new budget then counts
from the resume and is applied at its first epoch boundary.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

SAFETY = 0.97  # plan to 97% of the budget: the epoch time drifts a few percent within a run
EVAL_MARGIN = 1.15  # on the 12-min preset: 35.4 s estimated for 38.9 s of features, then 2.0 s of probe
STEADY_SKIP = 5  # steps at the start of an epoch left out of the step-time measurement
DECIDE_SHARE = 0.25  # decide before the warm-up ends once this share of the budget is spent
REPLAN_AFTER = 2  # epochs after the decision before the projection is trusted
GROW_SHARE = 0.02  # an upward re-plan adds at least this share of the planned epochs (and at least one)
GROW_AFTER = 3  # epochs after the decision before the watch may grow a plan
GROW_MARGIN = 0.10  # a longer plan must fit SAFETY with every remaining epoch this much slower than so far
# (both sized by benchmarks.budget_replay on epoch times recorded on the 2-core VM)


def due(*, done: int, warmup_epochs: float, spent_share: float) -> bool:
    """Whether to fix the epochs now, after ``done`` epochs (at least one trained by this process):
    at the last epoch boundary before the cosine begins (the next epoch would leave the warm-up),
    or once ``DECIDE_SHARE`` of the budget is spent, whichever comes first."""
    return done + 1 > warmup_epochs or spent_share >= DECIDE_SHARE


@dataclass
class Plan:
    epochs: int  # the epochs the run will train (total, counted from epoch 0)
    estimate_s: float  # the run's estimated wall time with that many epochs
    fits: bool  # the estimate is within the budget (False: even the minimum overruns)


def evals_between(done: int, last: int, every: int) -> int:
    """Online evals after the epochs ``done + 1 .. last``: every ``every`` epochs and after the last."""
    if not every or last <= done:
        return 0
    multiples = last // every - done // every
    return multiples + (0 if last % every == 0 else 1)


def estimate_s(*, elapsed_s: float, done: int, epochs: int, epoch_s: float, eval_s: float,
               evals_every: int) -> float:
    """The run's wall time if it trains ``epochs`` in all, estimated at the boundary after epoch
    ``done``: ``elapsed_s`` (the epochs so far and their evals, except the one due after epoch
    ``done``: the trainer plans at the boundary, before that eval runs, so it is added here), then
    ``epoch_s`` per epoch (with its end-of-epoch work) and ``eval_s`` per online eval."""
    pending = eval_s if evals_every and done % evals_every == 0 else 0.0
    return (elapsed_s + pending + (epochs - done) * epoch_s
            + evals_between(done, epochs, evals_every) * eval_s)


def plan_epochs(*, budget_s: float, elapsed_s: float, done: int, max_epochs: int, min_epochs: int,
                epoch_s: float, eval_s: float, evals_every: int) -> Plan:
    """The most epochs (``min_epochs .. max_epochs``) whose ``estimate_s`` fits ``SAFETY x budget_s``."""
    def estimate(epochs: int) -> float:
        return estimate_s(elapsed_s=elapsed_s, done=done, epochs=epochs, epoch_s=epoch_s, eval_s=eval_s,
                          evals_every=evals_every)

    lo = max(min_epochs, done)
    best = lo
    for epochs in range(lo, max_epochs + 1):
        if estimate(epochs) <= SAFETY * budget_s:
            best = epochs
    return Plan(best, estimate(best), estimate(best) <= budget_s)


@dataclass
class Watch:
    """What the trainer keeps after the decision to check that the plan still fits (``replan``)."""
    budget_s: float
    t_start: float  # the trainer's start (perf_counter)
    t0: float  # the decision (perf_counter)
    epoch0: int  # epochs done at the decision
    epoch_s: float  # the epoch time the plan assumed
    eval_s: float  # one online eval: the estimate, then the latest measured
    evals_s: float = 0.0  # seconds spent in online evals since the decision

    def note_eval(self, seconds: float) -> None:
        if seconds > 0:
            self.evals_s += seconds
            self.eval_s = seconds


def replan(watch: Watch, *, now: float, done: int, planned: int, max_epochs: int, evals_every: int,
           grow_after: int = GROW_AFTER, grow_margin: float = GROW_MARGIN) -> tuple[Plan, float, float] | None:
    """(a new plan, the measured epoch time, the projected end of ``planned``) when finishing
    ``planned`` epochs at the average epoch time since the decision (and the latest eval's time)
    would overrun the budget (a shorter plan), or when, ``grow_after`` epochs or more after the
    decision, at least ``GROW_SHARE`` of ``planned`` more epochs (at most ``max_epochs`` in all) fit
    ``SAFETY`` of it at a pace ``grow_margin`` slower (a longer plan, its estimate at the measured
    pace); None while the plan stands. ``benchmarks.budget_replay`` compares growth rules."""
    n = done - watch.epoch0
    if n < REPLAN_AFTER or planned <= done + 1:
        return None
    epoch_s = (now - watch.t0 - watch.evals_s) / n
    elapsed = now - watch.t_start
    projected = estimate_s(elapsed_s=elapsed, done=done, epochs=planned, epoch_s=epoch_s, eval_s=watch.eval_s,
                           evals_every=evals_every)
    if projected > watch.budget_s:
        plan = plan_epochs(budget_s=watch.budget_s, elapsed_s=elapsed, done=done, max_epochs=planned - 1,
                           min_epochs=done + 1, epoch_s=epoch_s, eval_s=watch.eval_s, evals_every=evals_every)
        return plan, epoch_s, projected
    if max_epochs <= planned or n < grow_after:
        return None
    slower = plan_epochs(budget_s=watch.budget_s, elapsed_s=elapsed, done=done, max_epochs=max_epochs,
                         min_epochs=planned, epoch_s=(1 + grow_margin) * epoch_s, eval_s=watch.eval_s,
                         evals_every=evals_every)
    if slower.epochs < planned + max(1, math.ceil(GROW_SHARE * planned)):
        return None
    at_pace = estimate_s(elapsed_s=elapsed, done=done, epochs=slower.epochs, epoch_s=epoch_s, eval_s=watch.eval_s,
                         evals_every=evals_every)
    return Plan(slower.epochs, at_pace, at_pace <= watch.budget_s), epoch_s, projected


class EpochClock:
    """The steady step time of one epoch: ``tick()`` after every step; ``seconds_per_step()``
    over the steps after the first ``STEADY_SKIP`` (all of them when the epoch is shorter)."""

    def __init__(self):
        self.times: list[float] = [time.perf_counter()]

    def tick(self) -> None:
        self.times.append(time.perf_counter())

    def seconds_per_step(self) -> float | None:
        t = self.times
        if len(t) < 2:
            return None
        skip = STEADY_SKIP if len(t) - 1 > 2 * STEADY_SKIP else 0
        return (t[-1] - t[skip]) / (len(t) - 1 - skip)


def describe(plan: Plan, budget_min: float, max_epochs: int, epoch_s: float, eval_s: float,
             n_evals: int, counted_from: str) -> str:
    head = (f"budget {budget_min:g} min ({counted_from}): an epoch takes {epoch_s:.1f}s here, "
            f"an online eval ~{eval_s:.0f}s (x{n_evals}); ")
    if plan.fits:
        return head + (f"training {plan.epochs} of at most {max_epochs} epochs "
                       f"(estimated {plan.estimate_s / 60:.1f} min)")
    return head + (f"warning: even {plan.epochs} epochs need about {plan.estimate_s / 60:.1f} min, over the "
                   f"budget; training {plan.epochs} (raise budget_minutes, or lower epochs or evals.max_train)")

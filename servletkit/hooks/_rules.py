"""How the dispatcher's modes combine plugins' answers, and how a failure is recorded.

:meth:`~servletkit.hooks.dispatcher.Dispatcher._run` calls the plugins, in every
mode; a mode only brings its :class:`Rule`: :class:`Interception` (a veto ends
the chain, modifications are pipelined), :class:`Observation` (answers ignored)
and :class:`FirstAnswer` (the first accepted answer ends the search). The
helpers at the end log a plugin's failure and return it as a
:class:`~servletkit.hooks._chain.PluginFailure`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

from servletkit.hooks._chain import Chain, FailureKind, Outcome, PluginFailure, Slot
from servletkit.hooks.decisions import Allow, Modify, Veto

log = logging.getLogger("servletkit.dispatcher")

T = TypeVar("T")

STOP: Final = object()  # a rule's answer: the run ends here
TIMED_OUT: Final = object()  # the watchdog cancelled the plugin
RAISED: Final = object()  # the plugin raised
BLOCKED: Final = object()  # the hang guard interrupted the plugin holding the loop


class Rule(Generic[T]):
    """How one mode combines the answers of a run; the only code a mode adds.

    :meth:`Dispatcher._run` makes the rule when a plugin first answers something
    other than ``None`` in time, or fails, and asks it about each such answer.
    """

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures: list[PluginFailure] = []

    def take(self, slot: Slot, answer: object, subject: Any) -> Any:
        """Combine a plugin's answer (not ``None``, in time).

        :returns: the subject for the next plugins, or ``STOP`` to end the run.
        """
        raise NotImplementedError

    def failed(self, slot: Slot, failure: PluginFailure) -> bool:
        """Record a plugin's failure; ``True`` ends the run."""
        slot.failures += 1
        self.failures.append(failure)
        return False

    def result(self) -> T:
        """What the mode returns."""
        raise NotImplementedError


class Interception(Rule[Outcome]):
    """The first ``Veto`` ends the chain; ``Modify`` is pipelined; ``Allow`` is noted.

    Anything else is a ``bad_answer`` failure. A failure of a plugin whose
    ``on_error`` is ``"deny"`` ends the chain with a veto naming it.
    """

    __slots__ = ("allowed_by", "chain", "decided", "event", "modified_by")

    def __init__(self, chain: Chain) -> None:
        super().__init__()
        self.chain = chain
        self.allowed_by: Slot | None = None
        self.modified_by: Slot | None = None
        self.event: Any = None
        self.decided: tuple[Veto, str] | None = None

    def take(self, slot: Slot, answer: object, subject: Any) -> Any:
        kind = type(answer)
        if kind is Allow:
            if self.allowed_by is None:
                self.allowed_by = slot
            return subject
        if kind is Veto:
            self.decided = (answer, slot.plugin)  # type: ignore[assignment]
            return STOP
        if kind is Modify and self.chain.modifiable:
            self.event = subject.with_content(answer.content)  # type: ignore[attr-defined]
            self.modified_by = slot
            return self.event
        return STOP if self.failed(slot, bad_answer(slot, self.chain, answer)) else subject

    def failed(self, slot: Slot, failure: PluginFailure) -> bool:
        super().failed(slot, failure)
        if not slot.deny:
            return False
        self.decided = (Veto(f"refused because the plugin {slot.plugin!r} failed"), slot.plugin)
        return True

    def result(self) -> Outcome:
        hook, failures = self.chain.hook, tuple(self.failures)
        if self.decided is not None:
            veto, plugin = self.decided
            return Outcome(hook, veto, plugin, self.event, failures)
        if self.modified_by is not None:
            return Outcome(hook, Modify(content=self.event.content), self.modified_by.plugin,
                           self.event, failures)
        if self.allowed_by is not None:
            if failures:
                return Outcome(hook, Allow(), self.allowed_by.plugin, None, failures)
            return self.allowed_by.allow_outcome
        return Outcome(hook, None, None, None, failures)


class InterceptionWithoutModify(Interception):
    """As :class:`Interception`, but a ``Modify`` is a ``bad_answer`` failure: the wire
    that asked can only let the event through or refuse it (the policy wire)."""

    __slots__ = ()

    def take(self, slot: Slot, answer: object, subject: Any) -> Any:
        if type(answer) is Modify:
            failure = record_failure(slot, self.chain, "bad_answer", "returned Modify, but "
                                     "the wire that asked can only allow or refuse the event")
            return STOP if self.failed(slot, failure) else subject
        return super().take(slot, answer, subject)


class Observation(Rule[tuple[PluginFailure, ...]]):
    """Answers are ignored; failures are reported."""

    __slots__ = ()

    def __init__(self, chain: Chain) -> None:
        super().__init__()

    def take(self, slot: Slot, answer: object, subject: Any) -> Any:
        return subject

    def result(self) -> tuple[PluginFailure, ...]:
        return tuple(self.failures)


class FirstAnswer(Rule[tuple[str | None, Any]]):
    """The first answer ``accept`` takes ends the run; failures are skipped."""

    __slots__ = ("accept", "answer")

    def __init__(self, accept: Callable[[Any], bool]) -> None:
        super().__init__()
        self.accept = accept
        self.answer: tuple[str | None, Any] = (None, None)

    def take(self, slot: Slot, answer: object, subject: Any) -> Any:
        if not self.accept(answer):
            return subject
        self.answer = (slot.plugin, answer)
        return STOP

    def result(self) -> tuple[str | None, Any]:
        return self.answer


def accept_any(answer: object) -> bool:
    return True



FAILURE_RECORD_ATTRIBUTE: Final = "plugin_failure"
"""The attribute of a failure's log record that holds its :class:`PluginFailure`."""


def record_failure(slot: Slot, chain: Chain, kind: FailureKind, detail: str,
                   exc: BaseException | None = None) -> PluginFailure:
    """Log a plugin's failure (with ``exc``'s traceback) and return it.

    The record carries the failure itself (:data:`FAILURE_RECORD_ATTRIBUTE`), so
    a log handler can show it without parsing the message: ``servletkit dev``
    prints one line per failure in its terminal. Failures are the slow path.
    """
    failure = PluginFailure(slot.plugin, chain.hook, kind, detail)
    log.error("plugin %r failed in %s: %s", slot.plugin, chain.hook, detail, exc_info=exc,
              extra={FAILURE_RECORD_ATTRIBUTE: failure})
    return failure


def timed_out(slot: Slot, chain: Chain, elapsed: float, answer: object) -> PluginFailure:
    """A plugin that took longer than its budget (cancelled or interrupted, if it was
    still running)."""
    budget = f"its budget of {slot.budget_s * 1000:g} ms (timeout_ms)"
    if answer is TIMED_OUT:
        return record_failure(slot, chain, "timed_out", f"no answer within {budget}: cancelled")
    if answer is BLOCKED:
        return record_failure(
            slot, chain, "timed_out",
            f"held the event loop for {elapsed * 1000:.0f} ms, over {budget}: interrupted")
    return record_failure(slot, chain, "timed_out",
                          f"took {elapsed * 1000:.1f} ms, over {budget}: its answer is ignored")


def raised(slot: Slot, chain: Chain, exc: Exception) -> PluginFailure:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return record_failure(slot, chain, "raised", detail, exc)


def bad_answer(slot: Slot, chain: Chain, answer: object) -> PluginFailure:
    if type(answer) is Modify:
        detail = f"returned Modify, but {chain.hook} has no event to modify"
    else:
        detail = f"returned {answer!r}; expected Allow(), Modify(...), Veto(...) or None"
    return record_failure(slot, chain, "bad_answer", detail)


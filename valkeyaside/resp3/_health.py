"""When is a link dead? A policy without I/O, shared by every transport.

A hung server (a stopped process, a frozen VM, a failover away from it) or a
cut path sends nothing, yet its kernel may still answer TCP keepalives, and
a link that hears nothing keeps serving local hits whose invalidations
cannot arrive. So a link must keep hearing from its server:

- **Overdue.** A request waits and nothing at all has been read for
  ``socket_timeout`` since it was sent (or since the last byte read, if
  later): the link is dead.
- **Silent.** Nothing has been read for ``health_check_interval``: send a
  ``PING``. If nothing at all is read within ``ping_timeout`` of sending it
  (:data:`PING_TIMEOUT`, 1 s, or ``socket_timeout`` if shorter), the link
  is dead.

Any byte counts as life: a busy server that is still answering (pushes, or
replies to earlier requests) never loses its link, however long one request
takes. A server silent for longer than ``health_check_interval +
ping_timeout`` (2 s by default) does, even while a slow command runs: give
a client that runs commands that long a larger ``health_check_interval``,
or ``None``.

The transport feeds :meth:`HealthPolicy.check` times from
``time.monotonic()``: now, when the link last read a byte, since when a
request has been waiting (see :meth:`HealthPolicy.check`), and when the
health ``PING`` still unanswered was sent; it acts on the verdict and asks
again at ``verdict.next_check``.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional

__all__ = ["PING_TIMEOUT", "Action", "HealthPolicy", "Verdict"]

#: How long a health PING may go without any byte read before the link is dead.
PING_TIMEOUT = 1.0


class Action(enum.Enum):
    NOTHING = "nothing"  #: all is well; check again at ``next_check``
    PING = "ping"  #: send a PING now (then check again at ``next_check``)
    DEAD = "dead"  #: close the link; ``reason`` says why


@dataclasses.dataclass(frozen=True)
class Verdict:
    action: Action
    #: When to call :meth:`HealthPolicy.check` again (monotonic seconds); None: only
    #: after the next read or request (nothing can fall due before one).
    next_check: Optional[float]
    #: Why the link is dead (for its error message); empty otherwise.
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class HealthPolicy:
    """The rules for one connection's links; ``None`` turns a rule off."""

    #: How long a request may wait with nothing read (``ConnectionOptions.socket_timeout``).
    socket_timeout: Optional[float]
    #: How long a link may read nothing before it is PINGed.
    health_check_interval: Optional[float] = 1.0
    #: How long the PING may go with nothing read (at most ``socket_timeout``).
    ping_timeout: float = PING_TIMEOUT

    @property
    def active(self) -> bool:
        """False when no rule is on: the transport needs no timer at all."""
        return self.socket_timeout is not None or self.health_check_interval is not None

    @property
    def ping_bound(self) -> float:
        """How long a health PING may go unanswered (nothing read) before the link is dead."""
        if self.socket_timeout is None:
            return self.ping_timeout
        return min(self.ping_timeout, self.socket_timeout)

    @property
    def tick(self) -> Optional[float]:
        """After a byte is read, nothing can fall due sooner than this; None: never.

        A transport may check once per tick of silence (then at the
        ``next_check`` of each verdict), and not at all while bytes flow.
        """
        delays = [self.socket_timeout]
        if self.health_check_interval is not None:
            delays += [self.health_check_interval, self.ping_bound]
        present = [delay for delay in delays if delay is not None]
        return min(present) if present else None

    def check(
        self,
        now: float,
        last_read: float,
        busy_since: Optional[float] = None,
        ping_sent: Optional[float] = None,
    ) -> Verdict:
        """What to do now.

        ``last_read``: when the link last read a byte (or was made).
        ``busy_since``: when the oldest waiting request was sent, None when
        none waits. A transport may pass the moment the link went from no
        request waiting to one: if the oldest waiting request was sent after
        ``last_read``, nothing waited before it, so that moment is its send
        time; otherwise the later ``last_read`` decides anyway.
        ``ping_sent``: when the health PING not yet answered was sent, None
        when there is none.
        """
        due: list[float] = []
        if busy_since is not None and self.socket_timeout is not None:
            quiet_since = max(last_read, busy_since)
            if now - quiet_since >= self.socket_timeout:
                return Verdict(Action.DEAD, None, (
                    f"no reply for {now - quiet_since:.1f} s (socket_timeout "
                    f"{self.socket_timeout:g} s) and nothing else heard from the server"
                ))
            due.append(quiet_since + self.socket_timeout)
        if ping_sent is not None:
            quiet_since = max(last_read, ping_sent)
            if now - quiet_since >= self.ping_bound:
                return Verdict(Action.DEAD, None, (
                    f"the server was silent for {now - last_read:.1f} s and did not answer "
                    f"a PING within {self.ping_bound:g} s"
                ))
            due.append(quiet_since + self.ping_bound)
        elif self.health_check_interval is not None:
            if now - last_read >= self.health_check_interval:
                due.append(now + self.ping_bound)
                return Verdict(Action.PING, min(due))
            due.append(last_read + self.health_check_interval)
        return Verdict(Action.NOTHING, min(due) if due else None)

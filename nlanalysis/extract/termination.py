"""Ending extract politely: SIGTERM and SIGHUP (scancel, docker stop, systemd, ``timeout``, a dropped ssh session) raise
SystemExit while a session runs (:func:`exit_on_term`), so that its ``finally`` clauses run on the way out: the reading
markers go (:mod:`.readers`: a polite kill is no death of the image being read) and the session is finalised."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

__all__ = ["default_term_handling", "exit_on_term"]

#: the polite kills, raised as SystemExit while a session runs
_TERM_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def exit_on_term() -> _ExitOnTerm:
    """A block (a session of extract) in which SIGTERM and SIGHUP raise ``SystemExit(128 + signal)`` in the main thread,
    so that the ``finally`` clauses on the way out run (the markers go: no death is counted; the session is finalised),
    where they would have killed the process (their handler is the default: an ignored SIGHUP, ``nohup``, or a handler
    the caller set, is left as it is; nothing changes outside the main thread). After :meth:`_ExitOnTerm.hold` (the
    session being finalised) a signal ends the block at its end. The first signal puts the handlers back: a second ends
    the process at once. The handlers are put back when the block ends."""
    return _ExitOnTerm()


class _ExitOnTerm:
    def __enter__(self) -> _ExitOnTerm:
        self.pid, self.received, self.holding = os.getpid(), None, False
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in _TERM_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def hold(self) -> None:
        """From now on a signal raises when the block ends, not where the process is."""
        self.holding = True

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self._restore()
        if self.received is not None and exc_type is None:
            raise SystemExit(128 + self.received)

    def _restore(self) -> None:
        for sig, previous in self.previous.items():
            signal.signal(sig, previous)
        self.previous = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if os.getpid() != self.pid:  # a process forked from extract, before default_term_handling: it dies as it would have
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received is None:
            self.received = signum
        self._restore()
        if not self.holding:
            raise SystemExit(128 + signum)


def default_term_handling() -> None:
    """In a process forked while :func:`exit_on_term` was in force (a DataLoader worker): the handling of SIGTERM and
    SIGHUP extract found. torch's ``terminate()`` of a worker, a hung one too, must end it (a Python handler waits for
    the decoder's C code to return)."""
    for sig in _TERM_SIGNALS:
        owner = getattr(signal.getsignal(sig), "__self__", None)
        if isinstance(owner, _ExitOnTerm):
            signal.signal(sig, owner.previous.get(sig, signal.SIG_DFL))

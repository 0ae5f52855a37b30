"""One generation at a time: the queue of runs and the worker thread that computes them.

Each client's run waits in line (its position is shown), then the worker computes it, handing
each event to the client's stream through a small bounded queue: a slow client holds back only
its own run, and memory stays bounded however many clients come (at most `max_waiting` runs
wait; more are refused). A run is cancelled between two steps when its client asks or leaves.
"""

import asyncio
import collections
import concurrent.futures
import contextlib
import threading
import traceback

from .checks import BadRequest
from .views import run_events

FINAL = ("done", "error")  # the event types that end a run's stream


class Cancelled(Exception):
    """The run's client cancelled it or went away."""


class Run:
    """One generation asked for by one client: what to compute, its events, its cancel flag."""

    def __init__(self, prompt, options, loop, backlog=2):
        self.prompt, self.options = prompt, options
        self.loop = loop  # the server's event loop, where the client's stream reads `events`
        self.events = asyncio.Queue(maxsize=backlog)
        self.cancelled = threading.Event()

    def put(self, event):
        """Hand `event` to the client's stream (from the worker thread); Cancelled if the client is gone."""
        put = self.events.put(event)
        try:
            delivery = asyncio.run_coroutine_threadsafe(put, self.loop)
        except RuntimeError:  # the server stopped: its event loop is closed
            put.close()
            raise Cancelled from None
        while True:
            if self.cancelled.is_set():
                delivery.cancel()
                raise Cancelled
            with contextlib.suppress(concurrent.futures.TimeoutError):
                return delivery.result(timeout=0.1)


class Runner:
    """The queue of runs and the one worker thread that computes them, in order."""

    def __init__(self, pipe, max_waiting=32):
        self.pipe = pipe
        self.max_waiting = max_waiting
        self.waiting = collections.deque()
        self.running = None
        self.closed = False
        self.changed = threading.Condition()
        threading.Thread(target=self.work, name="minisd-explore", daemon=True).start()

    def submit(self, run):
        with self.changed:
            if len(self.waiting) >= self.max_waiting:
                raise BadRequest(f"{len(self.waiting)} runs are waiting already; try again in a moment", 429)
            self.waiting.append(run)
            self.changed.notify()

    def position(self, run):
        """How many runs are ahead of `run` (the one computing included); None once it is not waiting."""
        with self.changed:
            if run in self.waiting:
                return self.waiting.index(run) + (self.running is not None)
            return None

    def cancel(self, run):
        """Stop `run`: it leaves the queue, or the worker stops it before its next step."""
        run.cancelled.set()
        with self.changed:
            if run in self.waiting:
                self.waiting.remove(run)

    def close(self):
        """Cancel every run and let the worker end (the server is stopping)."""
        with self.changed:
            self.closed = True
            for run in [*self.waiting, self.running]:
                if run is not None:
                    run.cancelled.set()
            self.waiting.clear()
            self.changed.notify()

    def work(self):
        while True:
            with self.changed:
                while not self.waiting and not self.closed:
                    self.changed.wait()
                if self.closed:
                    return
                self.running = self.waiting.popleft()
            try:
                self.compute(self.running)
            finally:
                with self.changed:
                    self.running = None

    def compute(self, run):
        """Every event of `run` to its client, then "done"; an error as an "error" event."""
        try:
            with contextlib.closing(run_events(self.pipe, run.prompt, run.options)) as events:
                for event in events:
                    run.put(event)
            run.put({"type": "done"})
        except Cancelled:
            return  # nobody is listening
        except ValueError as error:  # what the pipeline refuses, with its reason
            self.tell(run, {"type": "error", "message": str(error)})
        except Exception as error:  # a bug: the client hears what failed, the server's log has the traceback
            traceback.print_exc()
            self.tell(run, {"type": "error", "message": f"the run failed: {type(error).__name__}: {error}"})

    def tell(self, run, event):
        with contextlib.suppress(Cancelled):
            run.put(event)

"""The analysis budget: how many packets a second the reader looks at, and how often.

Every packet goes to the pcap files whatever this says (trace/evidence.py). The analysis
(flows, NAT hops, live lines) costs the reader CPU per packet, and under load each ms of
it costs the traced traffic several times that, so the kernel hands the reader at most
what this budget allows and counts the rest as `shed`. By default the budget follows the
machine's idle CPU: AUTO_CPU_SHARE of a core when it is busy, up to AUTO_CPU_SHARE_IDLE
when more than a core is idle, as records/s at the reader's measured cost per record
(what a record adds to a poll: a poll's own cost, whatever it reads, is measured apart).
The budget is a token bucket holding up to BUDGET_BURST_S seconds of its rate.
"""

import os
import time
from dataclasses import dataclass

POLL_INTERVAL = 0.1  # seconds between reads of the sources (SETTLE_NS is longer)
# ... while less than a core is idle: each poll costs ~1 ms of CPU whatever it reads
POLL_INTERVAL_BUSY = 0.25
AUTO_CPU_SHARE = 0.01  # 1% of a core: ~1000 records/s at ~10 us a record
AUTO_CPU_SHARE_IDLE = 0.5
AUTO_MIN_RATE, AUTO_MAX_RATE = 100, 100000  # records/s bounds of the automatic budget
BUDGET_BURST_S = 1.0  # the budget saves up to this many seconds of its rate


@dataclass
class _Window:
    """What learn() has been told since it last learnt: CPU seconds, work, polls."""

    cpu_s: float = 0.0
    work: int = 0
    polls: int = 0


class ReaderBudget:
    """`refill(capture)` before each read; `learn(cpu_s, records)` after it."""

    def __init__(self, max_rate=None):
        self.max_rate = max_rate  # None: automatic; 0: no budget
        self.cost = 10e-6  # CPU seconds a record adds, learned while running
        self.poll_cost = 0.0  # CPU seconds of a poll that reads (almost) nothing
        self.share = 0.0
        self._t = None
        self._cpu_prev = None
        self._idle = None  # idle cores between the last two refills
        self._ncpu = os.cpu_count() or 1
        self._window = _Window()

    @property
    def poll_interval(self):
        """Seconds between polls, from the machine's idle CPU at the last refill."""
        busy = self._idle is not None and self._idle < min(1.0, self._ncpu / 2)
        return POLL_INTERVAL_BUSY if busy else POLL_INTERVAL

    def refill(self, capture):
        """Give the kernel the records the reader may take until the next poll (and note
        the machine's idle CPU, which sets that and the poll interval)."""
        idle = self._idle_cores()
        if idle is not None:
            self._idle = idle
        rate = self.max_rate if self.max_rate is not None else self.auto_rate()
        if rate:
            now = time.monotonic()
            dt = now - self._t if self._t else 0.1
            self._t = now
            # a token bucket: a short connection's ~15 packets at ~4 points arrive within
            # a millisecond, more than one poll's share of a low rate
            burst = rate * BUDGET_BURST_S
            capture.set_budget(min(rate * dt, burst), burst=burst)

    def fill(self, capture):
        """refill() with a full bucket: the trace is ready, a burst may come at once."""
        self._t = time.monotonic() - BUDGET_BURST_S
        self.refill(capture)

    def learn(self, cpu_s, records, settled=0, whole=True):
        """What a poll costs by itself and what each record adds, from polls that read
        `records` and settled `settled` earlier ones (their journeys, lines and rows).
        `whole` False: part of this poll's work is still to be paid (the store writes
        it at a later poll's flush), so it is learnt with the polls up to that one.
        Polls with at most 2 of each teach the first, polls with 20+ the second (less
        the polls' own cost)."""
        w = self._window
        w.cpu_s += cpu_s
        w.work += max(records, settled)
        w.polls += 1
        if not whole:
            return
        cpu_s, work, polls = w.cpu_s, w.work, w.polls
        self._window = _Window()
        if work <= 2 * polls:
            self.poll_cost = 0.8 * self.poll_cost + 0.2 * cpu_s / polls
        elif work >= 20:
            per = max(cpu_s - polls * self.poll_cost, 0.0) / work
            self.cost = 0.8 * self.cost + 0.2 * max(per, 1e-6)

    def auto_rate(self):
        """Records/s the reader may take: what its CPU share can process, where the share
        follows the machine's idle CPU (AUTO_CPU_SHARE when busy, more when idle), so the
        traced traffic keeps the cores it is using."""
        share = AUTO_CPU_SHARE
        idle = self._idle
        if idle is not None:  # only a whole idle core beyond the first is taken, by half
            share = min(AUTO_CPU_SHARE_IDLE, max(AUTO_CPU_SHARE, 0.5 * (idle - 1.0)))
        self.share = share
        return int(min(AUTO_MAX_RATE, max(AUTO_MIN_RATE, share / self.cost)))

    def describe(self):
        if self.max_rate is not None:
            return self.max_rate
        return (
            f"auto (last {self.auto_rate()} records/s: {self.share:.1%} of a core at "
            f"{self.cost * 1e6:.0f} us/record; a poll {self.poll_cost * 1e3:.1f} ms)"
        )

    def _idle_cores(self):
        """Idle CPUs (0..ncpu) since the last call, from /proc/stat; None the first time."""
        try:
            with open("/proc/stat") as f:
                fields = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle, total = fields[3] + fields[4], sum(fields[:8])
        prev, self._cpu_prev = self._cpu_prev, (idle, total)
        if prev is None or total <= prev[1]:
            return None
        return (idle - prev[0]) / (total - prev[1]) * self._ncpu

"""Leased budget: admit a hot tenant's requests with no Redis call (docs/routing.md).

`quota.lua` grants a lease together with a request it admits: `requests` more requests of
that request's size (its RPM units and TPM tokens charged as arriving at the lease's end,
never given back) and as many concurrency slots (`<job>#<i>` members of the in-flight
sets), one per request. This replica spends them locally until the lease ends (`window`,
≤ 1 s): each job admitted from it holds one slot until the job is booked (`lease_book.lua`
takes the slot out, whichever replica books it), and once the lease is over its unused
slots go back to Redis (`Leases.expired`). A job is booked by one script call that runs
`lease_book.lua` then `release.lua` (`lease_book.folded_script`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

DEFAULT_WINDOW = 0.5
"""Seconds a lease may be spent for: its units are charged as arriving at its end."""
MAX_WISH = 256
"""Most requests one lease asks for."""
SLOT_GRACE = 30.0
"""Seconds a lease's slots stay in Redis past its end (`LLMQ_QUOTA_SLOT_GRACE`, this by
default): the slot of a job still running `SLOT_PUSH_AFTER` after its admission is pushed
to the reservation lease at the next tick (`Leases.taken`), and a slot is taken out of
Redis when its job is booked (`lease_book.lua`); a dead replica's unused slots come back
this long after its lease ended."""
SLOT_PUSH_AFTER = 0.5
"""Seconds a leased job runs before its slot is pushed to the reservation lease: most jobs
are booked (`Leases.done`) well before, and a slot pushed costs Redis work at every tick."""
MAX_USER_CHARS = 64
"""As `quota.MAX_USER_CHARS`: the end user is cut to this before it is booked."""
MARGIN = 0.02
"""Seconds before its end a lease stops admitting (a request admitted at E is still within
what was charged; the margin keeps a slow call from crossing it)."""

Scope = tuple[str, str, str]
"""(tenant, API key id, model): what one lease covers."""
Granted = tuple[int, int, str, str, bool, float, float]
"""`QuotaDecision.lease`."""


@dataclass(slots=True)
class Lease:
    job_id: str
    """The request that took it; its slots are `<job_id>#<i>`."""
    until: float
    """Unix seconds: its units were charged as arriving then."""
    requests: int
    tokens: int
    """TPM tokens left (only counted when a scope has a TPM limit)."""
    tpm: bool
    free: list[int]
    """Slot numbers not held by a job; empty when no scope has a concurrency limit."""
    slots: bool
    tok_t: str
    key_tok_t: str
    headers: Mapping[str, str] = field(default_factory=dict)
    budget: bool = False
    """It holds day, month and spend budget too: `tokens` and `usd` count, and what is left
    at its end is given back (`Leases.closed`)."""
    usd: float = 0.0
    price: tuple[float, float] = (0.0, 0.0)
    """Input and output USD per 1M tokens, as the grant priced it."""
    spent: tuple[int, float] = (0, 0.0)
    """Tokens and USD of the requests admitted from it."""
    granted: int = 0
    """Requests it was granted with."""
    full: bool = True
    """It was granted all it asked for: no limit is near (`Leases.ahead`)."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A request admitted from a lease: its booking ticket and the slot it holds."""

    ticket: str
    """`<admitted ms> <prompt> <max_tokens> <ms/token> <key ms/token> <key id> <slot>
    <budget lease> =<end user, percent-encoded>`: what `lease_book.lua` needs, carried in
    the job envelope (`Llmq-Lease`, a NATS header: nothing in it may be a space, CR or
    LF)."""
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Ticket:
    """A ticket read back."""

    at_ms: int
    prompt: int
    max_tokens: int
    tok_t: str
    key_tok_t: str
    key_id: str
    slot: str
    """The in-flight member the job holds; '-': none (no concurrency limit)."""
    lease: str
    """The job that took its lease, when the lease holds day, month and spend budget; '-'."""
    user: str


def ticket_of(ticket: str) -> Ticket:
    """Raises ValueError for a ticket that is not one (a report from a newer api)."""
    at, prompt, out, tok_t, ktok_t, key_id, slot, lease, user = ticket.split(" ")
    return Ticket(
        int(at), int(prompt), int(out), tok_t, ktok_t, key_id, slot, lease, unquote(user[1:])
    )


class Leases:
    """This replica's leases: per scope, the open ones, the one ending first first."""

    def __init__(self, window: float = DEFAULT_WINDOW, slot_grace: float = SLOT_GRACE) -> None:
        self.window = window
        self.slot_grace = slot_grace
        self._pool: dict[Scope, list[Lease]] = {}
        self._asking: set[Scope] = set()
        """Scopes with a lease asked for and not answered yet: one at a time."""
        self._taken: dict[str, tuple[str, str, str, float]] = {}
        """Job id -> (tenant, key id, slot member, admitted at) of the jobs running on a
        lease slot not pushed to the reservation lease yet (oldest first)."""
        self._again: list[tuple[str, str, str]] = []
        """Slots a push failed for (Redis away): pushed at the next tick."""
        self._recent: dict[Scope, list[float]] = {}
        """Per scope: [window start, admitted in it, admitted in the one before]."""
        self._gone: list[tuple[str, str, str]] = []
        self._closed: list[tuple[str, str, int, float]] = []
        """(tenant, lease's job id, tokens and USD spent) of ended budget leases."""
        """(tenant, key id, slot member) to take out of Redis: their lease is over."""
        self.admitted = 0
        """Requests admitted from a lease (observability, tests)."""
        self.asked_ahead = 0
        """Leases asked for ahead of need (`ahead`; observability, tests)."""

    def wish(self, scope: Scope, now: float) -> int:
        """Requests to ask a lease for: twice what the scope was admitted in the last
        window; 0 for a scope that is not hot (fewer than 2), so it goes one by one, and
        while another request of the scope asks for one. A wish > 0 is followed by
        `answered`."""
        if scope in self._asking:
            return 0
        start, count, before = self._recent.get(scope, (now, 0, 0))
        rate = max(count, before) if now - start < 2 * self.window else 0
        if rate < 2:
            return 0
        self._asking.add(scope)
        return min(2 * int(rate), MAX_WISH)

    def ask(self, scope: Scope, now: float) -> tuple[int, float, float]:
        """What `Quota.reserve` is given as `lease_wish`: (`wish`, the lease's end, its
        slots' end)."""
        until = now + self.window
        return self.wish(scope, now), until, until + self.slot_grace

    def ahead(self, scope: Scope, now: float) -> tuple[int, float, float] | None:
        """A lease to ask for in the background, ahead of need (`ask`'s answer), when the
        scope's newest open lease is half spent (half its requests, or half its window) and
        the scope is hot; else None. Followed by `answered`, as `wish`."""
        leases = self._pool.get(scope)
        if not leases or scope in self._asking:
            return None
        newest = leases[-1]
        if not newest.full:
            return None
        if 2 * newest.requests > newest.granted and now < newest.until - self.window / 4:
            return None
        wish = self.ask(scope, now)
        if wish[0] < 1:
            return None
        self.asked_ahead += 1
        return wish

    def answered(self, scope: Scope) -> None:
        """The lease `wish` asked for was granted (`grant`), refused, or the call failed."""
        self._asking.discard(scope)

    def note(self, scope: Scope, now: float) -> None:
        """Count one admission of `scope` (for `wish`)."""
        kept = self._recent.get(scope)
        if kept is None or now - kept[0] >= 2 * self.window:
            if len(self._recent) > 65_536:
                self._recent.clear()
            self._recent[scope] = [now, 1, 0]
        elif now - kept[0] >= self.window:
            kept[:] = [now, 1, kept[1]]
        else:
            kept[1] += 1

    def grant(
        self,
        scope: Scope,
        job_id: str,
        granted: Granted,
        *,
        need: int,
        cost: float,
        until: float,
        headers: Mapping[str, str],
        wished: int = 0,
    ) -> None:
        """Keep a lease `quota.lua` granted with `job_id` (`QuotaDecision.lease`), for
        requests of `need` tokens costing `cost`; `wished`: the requests asked for."""
        requests, slots, tok_t, ktok_t, budget, p_in, p_out = granted
        lease = Lease(
            job_id=job_id,
            until=until,
            requests=requests,
            tokens=requests * need,
            tpm=tok_t != "0" or ktok_t != "0" or budget,
            free=list(range(slots, 0, -1)),
            slots=slots > 0,
            tok_t=tok_t,
            key_tok_t=ktok_t,
            headers=headers,
            budget=budget,
            usd=requests * cost,
            price=(p_in, p_out),
            granted=requests,
            full=requests >= wished,
        )
        self._pool.setdefault(scope, []).append(lease)

    def take(
        self, scope: Scope, job_id: str, prompt: int, max_tokens: int, *, user: str, now: float
    ) -> Taken | None:
        """Admit one request from the scope's leases, or None (none open covers it)."""
        leases = self._pool.get(scope)
        if not leases:
            return None
        need = prompt + max_tokens
        for lease in leases:
            if now >= lease.until - MARGIN or lease.requests < 1:
                continue
            if (lease.tpm and lease.tokens < need) or (lease.slots and not lease.free):
                continue
            cost = (prompt * lease.price[0] + max_tokens * lease.price[1]) / 1e6
            if lease.budget and cost > lease.usd + 1e-12:
                continue
            lease.requests -= 1
            lease.tokens -= need
            lease.usd -= cost
            lease.spent = (lease.spent[0] + need, lease.spent[1] + cost)
            slot = "-"
            if lease.slots:
                slot = f"{lease.job_id}#{lease.free.pop()}"
                self._taken[job_id] = (scope[0], scope[1], slot, now)
            self.admitted += 1
            self.note(scope, now)
            rates = f"{lease.tok_t} {lease.key_tok_t}"
            who = quote(user[:MAX_USER_CHARS], safe="")  # a header value: no space, no CR/LF
            ticket = (
                f"{int(now * 1000)} {prompt} {max_tokens} {rates} {scope[1]} {slot} "
                f"{lease.job_id if lease.budget else '-'} ={who}"
            )
            return Taken(ticket, lease.headers)
        return None

    def _close(self, scope: Scope, lease: Lease) -> None:
        leases = self._pool.get(scope, [])
        if lease in leases:
            leases.remove(lease)
            if not leases:
                del self._pool[scope]
        self._gone += [(scope[0], scope[1], f"{lease.job_id}#{n}") for n in lease.free]
        lease.free = []
        lease.requests = 0
        if lease.budget:
            self._closed.append((scope[0], lease.job_id, *lease.spent))
            lease.budget = False

    def expired(self, now: float) -> list[tuple[str, str, str]]:
        """Close the leases that are over and hand out the slots to take out of Redis:
        (tenant, key id, member)."""
        for scope, leases in list(self._pool.items()):
            for lease in list(leases):
                if now >= lease.until - MARGIN:
                    self._close(scope, lease)
        gone, self._gone = self._gone, []
        return gone

    def done(self, job_id: str) -> None:
        """The job is being booked: its slot needs no push (the booking takes it out)."""
        self._taken.pop(job_id, None)

    def taken(self, before: float = math.inf) -> list[tuple[str, str, str]]:
        """Slots of the jobs admitted before `before` and not booked yet, (tenant, key id,
        member): pushed to the reservation lease, as a directly reserved job's slot is
        held; each is handed out once."""
        out, self._again = self._again, []
        running = self._taken
        while running:
            job_id, (tenant, key_id, slot, at) = next(iter(running.items()))
            if at >= before:
                break  # in admission order: the rest are younger
            del running[job_id]
            out.append((tenant, key_id, slot))
        return out

    def closed(self) -> list[tuple[str, str, int, float]]:
        """Budget leases ended since the last call, (tenant, lease's job id, tokens and USD
        spent): what they hold beyond that goes back (`lease_end.lua`)."""
        closed, self._closed = self._closed, []
        return closed

    def give_back(
        self,
        gone: list[tuple[str, str, str]],
        taken: list[tuple[str, str, str]],
        closed: list[tuple[str, str, int, float]],
    ) -> None:
        """What `expired`, `taken` and `closed` handed out and Redis did not take: next
        time."""
        self._gone += gone
        self._again += taken
        self._closed += closed

    def held(self) -> int:
        """Leases open now."""
        return sum(len(leases) for leases in self._pool.values())

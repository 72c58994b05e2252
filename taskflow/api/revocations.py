"""Which tokens are taken back, as each API process knows it: in memory, so
that checking a token costs no query, and kept current by LISTEN/NOTIFY.

A token is refused when its user no longer exists, when its version claim
(``ver``) is not its user's ``token_version`` (bumped by a password change),
or when its ``jti`` is in ``revoked_tokens`` (a logout). The database says
whenever one of those changes, whoever changes it (the API or a person in
psql), on channel ``taskflow_accounts`` (migration 0006 and
``db/functions/30_accounts.sql``).

* Each process holds the state of the users whose tokens it has seen: their
  version and their revoked tokens. A user not held is loaded with one query
  the first time, then served from memory; at most ``MAX_USERS`` are held,
  the oldest dropped first (it is loaded again when next seen).
* A notification updates what is held, and is passed to the observers (the
  event hub, which closes the event streams it refuses).
* A load that a notification overtakes is used for its request but not
  kept: it may have read the row before the change committed, and the
  notification, already applied, would then be undone by it.
* While the listening connection is down, nothing is heard, so nothing held
  is trusted: every check reads the database. When it is back, everything
  held is read again (changes made meanwhile were missed), and the observers
  are told to check every stream again.
* The process that takes a token back applies it at once, before it
  answers; the others when they hear it.

The race that remains: a request checked by another process just before that
process hears of a logout or a password change is served, as it would have
been a moment earlier. The window is the notification's delay, from the
commit to the listener (milliseconds on a healthy system), plus, when the
listening connection dies silently, the time until that is noticed (the
Listener pings every 5 s).

The upkeep of the account tables runs here too: it is the one loop the API
has for accounts. Every ``UPKEEP_SECONDS`` each process prunes throttle rows
past their window and revocations of expired tokens, in bounded batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from taskflow.auth import TokenClaims
from taskflow.errors import Unauthorized
from taskflow.store.accounts import AccountStore
from taskflow.store.pool import DATABASE_ERRORS, Listener, Record
from taskflow.waiting import wait_any, wait_event

log = logging.getLogger(__name__)

CHANNEL = "taskflow_accounts"
MAX_USERS = 100_000
LOAD_BATCH = 1000
LISTENER_START_SECONDS = 5.0
UPKEEP_SECONDS = 60.0
PRUNE_BATCH = 1000
PRUNE_ROUNDS = 10
# A user's revoked tokens kept in memory before the expired ones are dropped.
REVOKED_KEPT = 64


@dataclass(frozen=True, slots=True)
class Revocation:
    """One change: a user's new token version, a user deleted, or one token
    taken back."""

    user_id: int
    token_version: int | None = None
    token_id: str | None = None
    expires: float = 0.0
    deleted: bool = False

    def refuses(self, claims: TokenClaims) -> bool:
        if claims.user_id != self.user_id:
            return False
        if self.deleted:
            return True
        if self.token_version is not None and claims.token_version != self.token_version:
            return True
        return self.token_id is not None and claims.token_id == self.token_id

    @classmethod
    def from_notification(cls, payload: str) -> Revocation:
        item = orjson.loads(payload)
        if not isinstance(item, dict):
            raise TypeError("not a JSON object")
        user_id = item["user_id"]
        if type(user_id) is not int:
            raise TypeError("user_id is not an integer")
        if item.get("deleted") is True:
            return cls(user_id, deleted=True)
        if "token_version" in item:
            version = item["token_version"]
            if type(version) is not int:
                raise TypeError("token_version is not an integer")
            return cls(user_id, token_version=version)
        token_id = item["revoked"]
        if not isinstance(token_id, str):
            raise TypeError("revoked is not a string")
        return cls(user_id, token_id=token_id, expires=float(item["expires_at"]))


class UserTokens:
    """A user's tokens as this process knows them."""

    __slots__ = ("revoked", "token_version")

    def __init__(self, token_version: int | None, revoked: dict[str, float]) -> None:
        self.token_version = token_version  # None: the user does not exist
        self.revoked = revoked  # jti -> when that token expires (Unix seconds)

    def refuses(self, claims: TokenClaims) -> bool:
        return (
            self.token_version is None
            or claims.token_version != self.token_version
            or claims.token_id in self.revoked
        )

    def apply(self, revocation: Revocation) -> None:
        if revocation.deleted:
            self.token_version = None
        elif revocation.token_version is not None:
            self.token_version = revocation.token_version
        if revocation.token_id is not None:
            if len(self.revoked) >= REVOKED_KEPT:
                now = time.time()
                self.revoked = {jti: exp for jti, exp in self.revoked.items() if exp > now}
            self.revoked[revocation.token_id] = revocation.expires


# Told of each change (a Revocation), or of None: "anything may have
# changed, check everything again". Runs on the event loop; must not wait.
Observer = Callable[[Revocation | None], None]


class Revocations:
    """This process's view of the taken-back tokens (see the module docstring)."""

    def __init__(
        self, accounts: AccountStore, listener: Listener, *, login_window_seconds: float
    ) -> None:
        self.accounts = accounts
        self.listener = listener
        self.login_window_seconds = login_window_seconds
        self._users: dict[int, UserTokens] = {}
        # Moves on every change heard and every reconnect: a load that saw it
        # move may be older than what was heard, and is not kept.
        self._epoch = 0
        self._observers: list[Observer] = []
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()

    def add_observer(self, observer: Observer) -> None:
        self._observers.append(observer)

    # ----- checking

    async def check(self, claims: TokenClaims) -> None:
        """Raise Unauthorized if the token was taken back."""
        if not await self.allows(claims):
            raise Unauthorized("token revoked")

    async def allows(self, claims: TokenClaims) -> bool:
        state = self._users.get(claims.user_id) if self.listener.connected.is_set() else None
        if state is None:
            state = await self._load(claims.user_id)
        return not state.refuses(claims)

    async def _load(self, user_id: int) -> UserTokens:
        epoch, trusted = self._epoch, self.listener.connected.is_set()
        state = _states(await self.accounts.select_token_states([user_id]), [user_id])[user_id]
        if trusted and epoch == self._epoch and self.listener.connected.is_set():
            self._hold(user_id, state)
        return state

    def _hold(self, user_id: int, state: UserTokens) -> None:
        if user_id not in self._users and len(self._users) >= MAX_USERS:
            del self._users[next(iter(self._users))]  # the oldest
        self._users[user_id] = state

    # ----- changes

    def apply(self, revocation: Revocation) -> None:
        """A change, heard or made here: update what is held, tell the observers."""
        self._epoch += 1
        state = self._users.get(revocation.user_id)
        if state is not None:
            state.apply(revocation)
        self._tell(revocation)

    def on_notify(self, channel: str, payload: str) -> None:
        """The Listener's callback; runs on the event loop, so it must not wait."""
        if channel == CHANNEL:
            try:
                revocation = Revocation.from_notification(payload)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                # Only a person NOTIFYing this channel by hand can send this.
                log.warning(
                    "malformed account notification",
                    extra={"event": "account_notification_malformed", "error": str(exc)},
                )
                return
            self.apply(revocation)
        elif channel == "reconnected":
            # Whatever was sent while nobody listened is lost: forget what is
            # held, and read it again once listening.
            self._epoch += 1
            held = list(self._users)
            self._users.clear()
            self._spawn(self._reload(held))

    async def _reload(self, user_ids: list[int]) -> None:
        # The Listener reports "reconnected" before it listens again; what is
        # read before then could miss a change committed in between.
        await wait_any(self.listener.connected, self._stop, timeout=None)
        if self._stop.is_set():
            return
        epoch = self._epoch
        try:
            for start in range(0, len(user_ids), LOAD_BATCH):
                batch = user_ids[start : start + LOAD_BATCH]
                states = _states(await self.accounts.select_token_states(batch), batch)
                if epoch != self._epoch or not self.listener.connected.is_set():
                    break  # heard of more meanwhile: the rest loads on demand
                for user_id, state in states.items():
                    self._hold(user_id, state)
        except DATABASE_ERRORS as exc:
            # What is not reloaded is loaded on demand, by the next check.
            log.warning(
                "cannot reload token revocations",
                extra={"event": "revocations_reload_failed", "error": str(exc)},
            )
        self._tell(None)

    def _tell(self, revocation: Revocation | None) -> None:
        for observer in self._observers:
            observer(revocation)

    # ----- lifecycle

    async def start(self) -> None:
        self.listener.on_notify(self.on_notify)
        self._spawn(self.listener.run(self._stop))
        self._spawn(self._keep_pruning())
        # Until it listens, every check reads the database; give it a moment.
        await wait_any(self.listener.connected, timeout=LISTENER_START_SECONDS)

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)

    async def _keep_pruning(self) -> None:
        while not await wait_event(self._stop, UPKEEP_SECONDS):
            try:
                for _ in range(PRUNE_ROUNDS):
                    pruned = await self.accounts.prune_accounts(
                        self.login_window_seconds, PRUNE_BATCH
                    )
                    if pruned < PRUNE_BATCH:
                        break
            except DATABASE_ERRORS as exc:
                log.warning(
                    "cannot prune account rows",
                    extra={"event": "accounts_prune_failed", "error": str(exc)},
                )

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _states(rows: Iterable[Record], user_ids: Iterable[int]) -> dict[int, UserTokens]:
    """SELECT_TOKEN_STATES's rows by user; a user without rows does not exist."""
    states = {user_id: UserTokens(None, {}) for user_id in user_ids}
    for row in rows:
        state = states[row["id"]]
        state.token_version = row["token_version"]
        if row["jti"] is not None:
            state.revoked[row["jti"]] = row["expires"]
    return states

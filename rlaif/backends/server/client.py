"""HTTP to one or several inference servers: sessions, retries, bounded concurrency, sticky routing.

`Endpoint` is one server: a `requests.Session` per thread, a cap on requests in
flight, retries with exponential backoff on connection errors, timeouts, 429 and
5xx. After its last try it raises `ServerDown`; any other 4xx is `ServerRefused`
(the request is wrong, retrying cannot help).

`ServerPool` runs jobs over the live endpoints. A job goes to the endpoint that
wins a rendezvous hash of its routing key, so requests of one conversation stick
to one server (its prefix cache is used) and a dead server's jobs move to the
others with a warning, without moving anybody else's. Jobs may name a job they
must follow (`after`): a follower starts once that one is done, so it finds the
shared prefix already in the server's cache.
"""

from __future__ import annotations

import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import requests

from rlaif.errors import RlaifError

log = logging.getLogger(__name__)

RETRY_STATUS = {429, 500, 502, 503, 504}
MAX_BACKOFF_S = 30.0


class ServerDown(Exception):
    """A server did not answer after every try."""

    def __init__(self, url: str, tries: int, reason: str):
        super().__init__(f"server at {url} stopped answering after {tries} tries: {reason}")
        self.url, self.tries, self.reason = url, tries, reason


class ServerRefused(Exception):
    """The server answered 4xx (not 429): the request itself is wrong for this server."""

    def __init__(self, url: str, path: str, status: int, message: str):
        super().__init__(f"{url}{path} answered HTTP {status}: {message}")
        self.url, self.path, self.status, self.message = url, path, status, message


def _error_text(response: requests.Response) -> str:
    """The server's error message (OpenAI-style `{"error": {"message": ...}}` or plain text), on one line."""
    try:
        body = response.json()
    except ValueError:
        text = response.text
    else:
        error = body.get("error", body) if isinstance(body, dict) else body
        text = error.get("message", error) if isinstance(error, dict) else error
        if isinstance(body, dict) and "message" in body and not isinstance(text, str):
            text = body["message"]
    return " ".join(str(text).split())[:300] or response.reason or "no message"


class Endpoint:
    """One server's base URL (no `/v1`), with retries, backoff and at most `concurrency` requests in flight."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 300.0, retries: int = 5,
                 backoff: float = 0.5, concurrency: int = 8):
        self.url = url.rstrip("/")
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.set_concurrency(concurrency)
        self._local = threading.local()
        self.down: ServerDown | None = None  # set once it stopped answering: later calls fail at once

    def set_concurrency(self, concurrency: int) -> None:
        """At most this many requests in flight (set before the first job runs)."""
        self.concurrency = max(1, int(concurrency))
        self._slots = threading.BoundedSemaphore(self.concurrency)

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self.headers)
            adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
        return session

    def get(self, path: str, retries: int | None = None) -> Any:
        return self.call("GET", path, None, retries)

    def post(self, path: str, body: dict[str, Any], retries: int | None = None) -> Any:
        return self.call("POST", path, body, retries)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, retries: int | None = None) -> Any:
        """The JSON answer; `ServerDown` after `retries` + 1 failed tries, `ServerRefused` on a 4xx."""
        retries = self.retries if retries is None else retries
        reason = "no answer"
        for attempt in range(retries + 1):
            if self.down is not None:
                raise self.down
            try:
                with self._slots:
                    response = self._session().request(method, self.url + path, json=body, timeout=self.timeout)
            except requests.Timeout:
                reason = f"no answer within {self.timeout:g}s (raise --backend-option timeout=SECONDS)"
            except requests.ConnectionError as err:
                reason = f"cannot connect ({type(err).__name__})"
            else:
                if response.status_code < 400:
                    return self._json(response, path)
                if response.status_code not in RETRY_STATUS:
                    raise ServerRefused(self.url, path, response.status_code, _error_text(response))
                reason = f"HTTP {response.status_code}: {_error_text(response)}"
            if attempt < retries:
                delay = min(MAX_BACKOFF_S, self.backoff * 2 ** attempt)
                time.sleep(delay * (0.75 + 0.5 * random.random()))
        raise ServerDown(self.url, retries + 1, reason)

    def _json(self, response: requests.Response, path: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ServerRefused(self.url, path, response.status_code,
                                f"not JSON: {response.text[:120]!r}") from None


@dataclass
class Job:
    """One unit of work: `run(endpoint)` on the endpoint chosen by `key`, after job `after` (an index) if set."""

    key: bytes
    run: Callable[[Endpoint], Any]
    after: int | None = None


def _weight(key: bytes, url: str) -> bytes:
    return hashlib.blake2b(key + b"\0" + url.encode(), digest_size=8).digest()


class ServerPool:
    """Live endpoints of one served model; jobs routed by rendezvous hash, moved off servers that die."""

    def __init__(self, endpoints: Sequence[Endpoint]):
        if not endpoints:
            raise RlaifError("The server back end needs at least one URL.")
        self.endpoints = list(endpoints)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None  # kept: its threads keep their sessions (connections)

    @property
    def alive(self) -> list[Endpoint]:
        return [e for e in self.endpoints if e.down is None]

    def pick(self, key: bytes) -> Endpoint:
        alive = self.alive
        if not alive:
            raise self._all_down()
        return max(alive, key=lambda e: _weight(key, e.url))

    def mark_down(self, endpoint: Endpoint, down: ServerDown) -> None:
        with self._lock:
            if endpoint.down is not None:
                return
            endpoint.down = down
            left = len(self.alive)
        if left:
            log.warning("%s; its requests move to the other %d server(s).", down, left)

    def _all_down(self) -> RlaifError:
        downs = [e.down for e in self.endpoints if e.down is not None]
        if len(self.endpoints) == 1 and downs:
            return RlaifError(f"{downs[0]}; restart it and rerun with --resume.")
        last = downs[-1] if downs else "no server answered"
        return RlaifError(f"All {len(self.endpoints)} servers stopped answering (last: {last}); "
                          "restart them and rerun with --resume.")

    def call(self, key: bytes, run: Callable[[Endpoint], Any]) -> Any:
        """`run` on the endpoint for `key`; on `ServerDown` the next live endpoint takes it."""
        while True:
            endpoint = self.pick(key)
            try:
                return run(endpoint)
            except ServerDown as down:
                self.mark_down(endpoint, down)

    def run(self, jobs: Sequence[Job]) -> list[Any]:
        """Every job's result, in order; followers start when the job they follow is done."""
        results: list[Any] = [None] * len(jobs)
        followers: dict[int, list[int]] = {}
        roots = []
        for i, job in enumerate(jobs):
            (followers.setdefault(job.after, []) if job.after is not None else roots).append(i)
        if not jobs:
            return results
        if self._executor is None:
            workers = max(1, sum(e.concurrency for e in self.endpoints))
            self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rlaif-server")
        pending: dict[Future, int] = {}
        try:
            for i in roots:
                pending[self._executor.submit(self.call, jobs[i].key, jobs[i].run)] = i
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()
                    for j in followers.get(i, ()):
                        pending[self._executor.submit(self.call, jobs[j].key, jobs[j].run)] = j
        finally:
            for future in pending:  # after an error: what has not started never will
                future.cancel()
        return results

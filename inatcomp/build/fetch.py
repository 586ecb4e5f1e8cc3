"""Fetching the selected photos from a bucket over HTTP(S) into a local cache, through every fault a network has.

The client is urllib3 (its ``PoolManager``) driven by a pool of threads. It was chosen over httpx and aiohttp
because it is small, has no asyncio (the builder is synchronous code with process pools, and an event loop
would gain nothing where each request's time is spent waiting on the network with the GIL released), keeps
connections alive in a bounded pool per host (one TLS handshake per connection, not per photo), checks a
body against its ``Content-Length`` itself, and is the client already underneath ``requests`` and ``botocore``
(the bucket's own SDK): the best-trodden path to S3 there is.

What each answer means:

- 200 with an image that decodes: written to ``{cache}/{photo_id}/{size}.{extension}`` through a temporary
  name and renamed once complete and decoded, so the cache never holds half a photo (``kill -9`` at any
  moment leaves at most a ``*.part`` file, removed when the photo is fetched again or found gone);
- 429, 408 and 5xx, connection errors and resets, connect and read timeouts, an answer that takes longer than
  ``total_timeout`` in all (a server trickling bytes never trips the read timeout), bodies shorter than their
  ``Content-Length``: retried with exponential back-off and full jitter, at least as long as ``Retry-After``
  says (which also pauses every worker: a server that asks for a pause gets it from the whole client);
- 404, 403, 410 and every other 4xx: permanent for that photo;
- 200 with a body that is not an image (an HTML error page) or does not decode: retried once, then permanent;
- a body longer than ``max_bytes`` (read no further, so memory stays bounded): permanent;
- still failing after ``max_attempts``: left out of this build ("gave up"), but not in the ledger (nothing
  showed it gone: a rerun asks again). ``max_give_ups_in_a_row`` such photos with no answer in between mean
  the server is down or refusing us: the fetch stops (:class:`FetchAbortedError`) rather than leave out photos
  that are there, and a rerun continues from the cache.

The photos the server showed gone are appended to a ledger beside the photos (:mod:`inatcomp.build.ledger`),
so a rerun does not ask again for them, unless ``retry_failed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import io
import logging
import math
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import urllib3
from PIL import Image

from inatcomp.build.ledger import FailureLedger
from inatcomp.build.progress import Progress

__all__ = [
    "BUCKET_SIDES",
    "OPEN_DATA_URL",
    "FetchAbortedError",
    "FetchReport",
    "FetchSettings",
    "PhotoFetcher",
    "photo_url_template",
]

_logger = logging.getLogger(__name__)

#: The iNaturalist Open Data bucket's photos (docs/formats.md §1), the meaning of ``--photo-url open-data``.
OPEN_DATA_URL = "https://inaturalist-open-data.s3.amazonaws.com/photos/{photo_id}/{size}.{extension}"
#: Long side in pixels of each size the bucket holds (docs/formats.md §1).
BUCKET_SIDES = {"square": 75, "thumb": 100, "small": 240, "medium": 500, "large": 1024, "original": 2048}
#: Statuses retried: rate limiting, request timeout, and every server error.
_TRANSIENT_4XX = (408, 425, 429)
_CHUNK = 256 * 1024  # bytes asked of the socket per read: a medium photo in one or two reads


def photo_url_template(template: str) -> str:
    """The URL template ``--photo-url`` names: ``open-data`` for the bucket, else an http(s) template.

    Raises:
        ValueError: Not http(s), without a host or a ``{photo_id}`` field, or with a field other than the three.
    """
    if template == "open-data":
        return OPEN_DATA_URL
    if not template.startswith(("http://", "https://")):
        raise ValueError(f"--photo-url: expected an http:// or https:// template or 'open-data', got {template!r}")
    try:
        template.format(photo_id=1, size="medium", extension="jpg")
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"--photo-url: only {{photo_id}}, {{size}} and {{extension}} may appear in {template!r} ({error})"
        ) from error
    if not template.split("://", 1)[1].split("/", 1)[0]:
        raise ValueError(f"--photo-url: no host in {template!r}")
    if "{photo_id}" not in template:
        raise ValueError(f"--photo-url: {template!r} has no {{photo_id}}: every photo would be the same URL")
    return template


@dataclasses.dataclass
class FetchSettings:
    """How photos are fetched.

    Attributes:
        url: URL template with ``{photo_id}``, ``{size}`` and ``{extension}`` (see :func:`photo_url_template`).
        cache: Folder of the fetched photos, in the export's layout ``{photo_id}/{size}.{extension}``.
        size: Photo size asked for (``medium``: 500 px on the long side).
        workers: Concurrent requests (threads, and connections kept alive per host).
        max_rps: Ceiling on requests per second, all workers together; 0 for none.
        retry_failed: Ask again for the photos the ledger lists as gone.
        connect_timeout: Seconds to open a connection.
        read_timeout: Seconds any one read of the answer may wait.
        total_timeout: Seconds one request may take in all, from sending it to the last byte of the answer.
        max_bytes: Longest body accepted, a longer one permanent (a server that never stops must not fill memory).
        max_attempts: Requests for one photo before it is given up.
        backoff_base: Back-off before the first retry, doubled each retry (before the jitter).
        backoff_cap: Longest back-off (before ``Retry-After``).
        max_retry_after: Longest ``Retry-After`` honoured, in seconds (a longer one is cut to this).
        max_give_ups_in_a_row: Photos given up after ``max_attempts`` with no answer between them that stop
            the fetch (an outage must not turn into photos left out of the release).
    """

    url: str
    cache: Path
    size: str = "medium"
    workers: int = 32
    max_rps: float = 200.0
    retry_failed: bool = False
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 120.0
    max_bytes: int = 64_000_000
    max_attempts: int = 8
    backoff_base: float = 0.5
    backoff_cap: float = 60.0
    max_retry_after: float = 300.0
    max_give_ups_in_a_row: int = 50

    def check(self) -> None:
        """Reject impossible settings.

        Raises:
            ValueError: With a one-line explanation naming the option.
        """
        photo_url_template(self.url)
        if self.workers < 1:
            raise ValueError(f"--fetch-workers must be at least 1, got {self.workers}")
        if self.max_rps < 0:
            raise ValueError(f"--max-rps must be 0 (no ceiling) or more, got {self.max_rps}")
        for name, value in (("read", self.read_timeout), ("connect", self.connect_timeout),
                            ("total", self.total_timeout)):  # fmt: skip
            if not value > 0:
                raise ValueError(f"--fetch-timeout: the {name} timeout must be positive, got {value}")
        if self.max_attempts < 1 or self.max_give_ups_in_a_row < 1:
            raise ValueError("max_attempts and max_give_ups_in_a_row must be at least 1")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.max_retry_after < 0 or self.max_bytes < 1:
            raise ValueError("back-offs and Retry-After's ceiling must be 0 or more, max_bytes at least 1")
        if not self.size or "/" in self.size:
            raise ValueError(f"--photo-size: expected a size such as medium, large or original, got {self.size!r}")


@dataclasses.dataclass
class FetchReport:
    """What the fetches of one build did (the audit's fetch section); counts are photos unless named otherwise.

    Attributes:
        needed: Distinct photos a selection round needed.
        from_cache: Of those, already in the cache.
        requested: Photos asked for from the server.
        fetched: Photos received and written to the cache.
        requests: HTTP requests made (first tries and retries).
        retries: Requests beyond each photo's first, by the reason of the failure before them.
        failed: Photos left out in this build, by reason: shown gone (in the ledger), or given up after the retries.
        known_gone: Photos the ledger already listed as gone (not asked for again).
        bytes: Bytes of the photos received.
        rounds: Selection rounds (one more each time a permanent failure sent the selection back).
        replaced: Failed photos whose observation is in the release with another photo.
        dropped: Failed photos whose observation is not in the release.
        gone: Photo ids left out of the release because they are gone.
    """

    needed: int = 0
    from_cache: int = 0
    requested: int = 0
    fetched: int = 0
    requests: int = 0
    retries: Counter = dataclasses.field(default_factory=Counter)
    failed: Counter = dataclasses.field(default_factory=Counter)
    known_gone: int = 0
    bytes: int = 0
    rounds: int = 0
    replaced: int = 0
    dropped: int = 0
    gone: set[int] = dataclasses.field(default_factory=set)

    def as_dict(self) -> dict:
        """The report as the audit writes it (the gone photo ids as a count)."""
        return {
            "needed": self.needed,
            "from_cache": self.from_cache,
            "requested": self.requested,
            "fetched": self.fetched,
            "requests": self.requests,
            "retried": sum(self.retries.values()),
            "retries_by_reason": dict(sorted(self.retries.items())),
            "permanently_failed": sum(self.failed.values()),
            "failed_by_reason": dict(sorted(self.failed.items())),
            "known_gone": self.known_gone,
            "replaced": self.replaced,
            "dropped": self.dropped,
            "bytes": self.bytes,
            "rounds": self.rounds,
        }


class _RateLimiter:
    """At most ``rate`` starts per second over all threads; ``pause`` holds every start back (a Retry-After)."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.next = time.monotonic()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            time.sleep(start - now)

    def pause(self, seconds: float) -> None:
        with self.lock:
            self.next = max(self.next, time.monotonic() + seconds)


class FetchAbortedError(Exception):
    """The server failed too many photos in a row for any reason but their own: it is down or refusing us."""


class _TransientError(Exception):
    """A failure worth another try; ``reason`` names it in the audit, ``wait`` is the server's Retry-After."""

    def __init__(self, reason: str, wait: float = 0.0) -> None:
        super().__init__(reason)
        self.reason, self.wait = reason, wait


class _NotImageError(Exception):
    """A 200 whose body is not an image or does not decode."""


class _PermanentError(Exception):
    """An answer that will not change by asking again: ``status`` for the ledger, ``reason`` for the audit."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _retry_after(value: str | None) -> float:
    """Seconds a ``Retry-After`` header asks for (a number of seconds or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "nan" and "inf" parse as numbers too: neither is a wait
        return max(seconds, 0.0) if math.isfinite(seconds) else 0.0
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    return max(when.timestamp() - time.time(), 0.0)


def _check_image(data: bytes, content_type: str | None) -> None:
    """Raise :class:`_NotImageError` unless ``data`` is an image that decodes to the end.

    JPEGs are decoded at an eighth of their size (DCT scaling still reads every coded block, so a cut or
    damaged file fails), which costs a fraction of a full decode. Any exception of the decoder means "does not
    decode": Pillow's plugins raise more than ``OSError`` on bad bytes (``EOFError``, ``struct.error`` …).
    """
    if content_type and content_type.split(";")[0].strip().lower().startswith("text/"):
        raise _NotImageError(f"content type {content_type}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # noqa: BLE001 - see above: whatever the bytes make the decoder raise
        raise _NotImageError(f"{type(error).__name__}: {error}") from error


class PhotoFetcher:
    """Fetches photos into the cache with a pool of threads sharing one connection pool.

    Args:
        settings: How to fetch.
    """

    def __init__(self, settings: FetchSettings) -> None:
        settings.check()
        self.settings = settings
        self.template = photo_url_template(settings.url)
        self.cache = Path(settings.cache)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.ledger = FailureLedger(self.cache)
        self.report = FetchReport()
        self.limiter = _RateLimiter(settings.max_rps)
        self.lock = threading.Lock()
        self.seen: set[int] = set()
        self.give_ups_in_a_row = 0
        self.http = urllib3.PoolManager(
            num_pools=4,
            maxsize=settings.workers,  # one kept-alive connection per worker and host
            block=True,
            timeout=urllib3.Timeout(connect=settings.connect_timeout, read=settings.read_timeout),
            # Our own loop retries (with back-off and the audit's counts); urllib3 only follows redirects.
            retries=urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5),
            headers={"User-Agent": "inatcomp-build"},
        )
        self.cache_text = str(self.cache)
        # A template whose host has no field: that host's pool is used directly (no URL parsing per photo).
        scheme_end = self.template.index("://") + 3
        path_start = self.template.find("/", scheme_end)
        self.host = self.template[: path_start if path_start >= 0 else len(self.template)]
        self.host_pool = None if "{" in self.host else self.http.connection_from_url(self.host)

    def path(self, photo_id: int, extension: str) -> str:
        """Where a photo lives in the cache."""
        return os.path.join(self.cache_text, str(photo_id), f"{self.settings.size}.{extension}")

    def url(self, photo_id: int, extension: str) -> str:
        """Where a photo is on the server."""
        return self.template.format(photo_id=photo_id, size=self.settings.size, extension=extension)

    def known_gone(self) -> set[int]:
        """Photo ids the ledger lists as gone at this size (none when ``retry_failed``)."""
        return set() if self.settings.retry_failed else self.ledger.gone(self.settings.size)

    def fetch(self, photos: Sequence[tuple[int, str]]) -> set[int]:
        """Make sure every photo is in the cache; returns the ids that failed for good (also in the ledger).

        Photos already in the cache are not asked for; each photo is counted once in :attr:`report` over
        every call.
        """
        todo = []
        cached = 0
        for photo_id, extension in photos:
            photo_id = int(photo_id)
            if photo_id in self.seen:
                continue
            self.seen.add(photo_id)
            self.report.needed += 1
            if os.path.isfile(self.path(photo_id, extension)):
                cached += 1
            else:
                todo.append((photo_id, extension))
        self.report.from_cache += cached
        self.report.requested += len(todo)
        if not todo:
            return set()
        _logger.info("fetching %d photos (%d in the cache) from %s", len(todo), cached, self.template)
        failed: set[int] = set()
        progress = Progress("fetch", len(todo))
        self._run(todo, failed, progress)
        progress.show(final=True)
        if self.settings.retry_failed:
            self.ledger.forget([p for p, _ in todo if p not in failed], self.settings.size)
        return failed

    def _run(self, todo: list[tuple[int, str]], failed: set[int], progress: Progress) -> None:
        """Fetch ``todo`` with the workers; the calling thread shows the progress and re-raises a worker's bug.

        After a bug or an interrupt of the caller (Ctrl-C) the workers take no new photo.
        """
        jobs = iter(todo)
        errors: list[BaseException] = []
        stop = threading.Event()

        def work() -> None:
            while not stop.is_set():
                with self.lock:
                    job = next(jobs, None)
                if job is None:
                    return
                try:
                    if not self._fetch_one(*job, progress):
                        with self.lock:
                            failed.add(job[0])
                except BaseException as error:  # a bug: stop every worker and raise it in the caller
                    errors.append(error)
                    stop.set()

        threads = [threading.Thread(target=work, daemon=True) for _ in range(min(self.settings.workers, len(todo)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
                    progress.show()
        finally:
            stop.set()
        if errors:
            raise errors[0]

    def _fetch_one(self, photo_id: int, extension: str, progress: Progress) -> bool:
        """Fetch one photo with retries; True when it is in the cache, False when it failed for good."""
        s = self.settings
        url, target = self.url(photo_id, extension), self.path(photo_id, extension)
        not_image = 0
        for attempt in range(1, s.max_attempts + 1):
            self.limiter.wait()
            try:
                data, content_type = self._get(url)
                try:
                    _check_image(data, content_type)
                except _NotImageError as error:
                    not_image += 1
                    if not_image >= 2:
                        _remove_parts(target)  # a gone photo is not fetched again to replace a killed run's part
                        return self._give_up(photo_id, url, "200", attempt, "not an image", str(error), progress)
                    raise _TransientError("not an image") from error
            except _PermanentError as error:
                _remove_parts(target)
                return self._give_up(photo_id, url, error.status, attempt, error.reason, error.reason, progress)
            except _TransientError as error:
                if attempt == s.max_attempts:
                    return self._give_up_for_now(photo_id, url, error.reason, progress)
                self._count_retry(error.reason, progress)
                wait = min(error.wait, s.max_retry_after)
                if wait:
                    self.limiter.pause(wait)
                backoff = random.uniform(0, min(s.backoff_cap, s.backoff_base * 2 ** (attempt - 1)))
                # Above a Retry-After, a little jitter still: the workers told together do not return together.
                time.sleep(max(backoff, wait + random.uniform(0, s.backoff_base) if wait else 0.0))
                continue
            self._write(target, data)
            with self.lock:
                self.give_ups_in_a_row = 0
                self.report.fetched += 1
                self.report.bytes += len(data)
            progress.add(done=1, size=len(data))
            return True
        raise AssertionError("unreachable: the last attempt returns")

    def _get(self, url: str) -> tuple[bytes, str | None]:
        """One GET: the body and Content-Type of a 200, or :class:`_TransientError` / :class:`_PermanentError`."""
        with self.lock:
            self.report.requests += 1
        deadline = time.monotonic() + self.settings.total_timeout
        try:
            if self.host_pool is not None:  # one host: its pool directly, without parsing each URL again
                response = self.host_pool.urlopen(
                    "GET", url[len(self.host) :], headers=self.http.headers, preload_content=False, redirect=False
                )
                if 300 <= response.status < 400 and response.get_redirect_location():
                    response.drain_conn()
                    response.release_conn()
                    response = self.http.request("GET", url, preload_content=False)  # maybe to another host
            else:
                response = self.http.request("GET", url, preload_content=False)
            try:
                data = self._read_body(response, deadline)
            finally:
                response.release_conn()
        except urllib3.exceptions.MaxRetryError as error:
            raise _TransientError(_error_reason(error.reason)) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise _TransientError(_error_reason(error)) from error
        status = response.status
        if status == 200:
            return data, response.headers.get("Content-Type")
        if status in _TRANSIENT_4XX or status >= 500:
            raise _TransientError(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
        raise _PermanentError(str(status), f"HTTP {status}")

    def _read_body(self, response: urllib3.BaseHTTPResponse, deadline: float) -> bytes:
        """The whole body, at most ``max_bytes`` of it and before ``deadline`` (its length checked by urllib3).

        Each read returns what the socket has (``read1``): the deadline holds however slowly the server sends.
        """
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read1(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            chunks.append(chunk)
            if size > self.settings.max_bytes:
                response.close()  # the rest is never read: the connection cannot be used again
                raise _PermanentError(str(response.status), f"body over {self.settings.max_bytes:,} bytes")
            if time.monotonic() > deadline:
                response.close()
                raise _TransientError("total timeout")

    def _count_retry(self, reason: str, progress: Progress) -> None:
        """Count a request about to be made again, by the reason of the failure before it."""
        with self.lock:
            self.report.retries[reason] += 1
        progress.add(retries=1)

    def _give_up(
        self, photo_id: int, url: str, status: str, attempts: int, reason: str, detail: str, progress: Progress
    ) -> bool:
        """Record a photo the server showed gone (ledger and report); always False."""
        _logger.warning("photo %d gone (%s, %d attempts) at %s: %s", photo_id, reason, attempts, url, detail)
        self.ledger.add(photo_id, self.settings.size, url, status, attempts, reason)
        with self.lock:
            self.give_ups_in_a_row = 0  # an answer about the photo itself: the server is up
            self.report.failed[reason] += 1
        progress.add(done=1, failures=1)
        return False

    def _give_up_for_now(self, photo_id: int, url: str, last: str, progress: Progress) -> bool:
        """Leave out a photo that kept failing for transient reasons (not in the ledger); always False.

        Raises:
            FetchAbortedError: The ``max_give_ups_in_a_row``-th such photo with no answer in between.
        """
        attempts = self.settings.max_attempts
        reason = f"gave up after {attempts} attempts"
        _logger.warning("photo %d left out (%s, the last %s) at %s; a rerun asks again", photo_id, reason, last, url)
        with self.lock:
            self.give_ups_in_a_row += 1
            in_a_row = self.give_ups_in_a_row
            self.report.failed[reason] += 1
        progress.add(done=1, failures=1)
        if in_a_row >= self.settings.max_give_ups_in_a_row:
            raise FetchAbortedError(
                f"{in_a_row} photos in a row failed {attempts} times each (the last: {last} at {url}): the server "
                f"is down or refusing us, so the fetch stops rather than leave them out of the release; the "
                f"{self.report.fetched:,} photos fetched are kept in {self.cache}, and a rerun continues"
            )
        return False

    def _write(self, target: str, data: bytes) -> None:
        """Write a photo atomically: a temporary name in its folder, renamed once whole (stale ``*.part`` removed).

        A write that fails (a full disk) removes its temporary file before the error goes on."""
        folder, name = os.path.split(target)
        try:
            os.mkdir(folder)  # a photo's own folder: usually new, and then nothing stale can be in it
        except FileExistsError:
            _remove_parts(target)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
        tmp = f"{target}.{os.getpid()}.{threading.get_ident()}.part"
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def close(self) -> None:
        """Close the kept-alive connections."""
        self.http.clear()


def _remove_parts(target: str) -> None:
    """Remove the ``*.part`` files of ``target`` that a killed run left in its folder (if the folder exists)."""
    folder, name = os.path.split(target)
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(name + ".") and entry.name.endswith(".part"):
                with contextlib.suppress(FileNotFoundError):  # another run sharing the cache took it
                    os.unlink(entry.path)


def _error_reason(error: BaseException | None) -> str:
    """A short name of a network error for the audit: timeout, connection reset, short body, …"""
    if isinstance(error, urllib3.exceptions.ConnectTimeoutError):
        return "connect timeout"
    if isinstance(error, (urllib3.exceptions.ReadTimeoutError, TimeoutError)):
        return "read timeout"
    if isinstance(error, urllib3.exceptions.ProtocolError):
        inner = error.args[1] if len(error.args) > 1 else None
        if isinstance(inner, urllib3.exceptions.IncompleteRead) or "IncompleteRead" in str(error):
            return "short body"
        if isinstance(inner, BaseException):
            return _error_reason(inner)
        return "protocol error"
    if isinstance(error, urllib3.exceptions.IncompleteRead):
        return "short body"
    if isinstance(error, ConnectionResetError):
        return "connection reset"
    if isinstance(error, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError)):
        return "connection refused"
    if isinstance(error, urllib3.exceptions.SSLError):
        return "TLS error"
    return type(error).__name__ if error is not None else "network error"

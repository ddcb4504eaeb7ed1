"""The S3 event relay: S3 notifications (SNS HTTP subscription, MinIO webhook, EventBridge API destination) come
here and go into the collection's durable change queue (millrace.events.queue), which the collection's `drain` run
empties. Open-source Prefect has no webhooks, so the relay also emits Prefect events: one per object for the event
feed, and a `millrace.changes.pending` wake-up that a deployment trigger turns into a drain run.

    MILLRACE_RELAY_TOKEN=... PREFECT_API_URL=http://127.0.0.1:4200/api python -m intake.relay --port 8787

200 means the changes are durably queued; the events follow without holding the answer up, and a wake-up that
never reaches Prefect delays the drain only until its schedule sweeps the queue. 503 means the queue (the ledger
database) could not be written and the sender must deliver again (SNS, MinIO and EventBridge all do). Keys outside
MILLRACE_SOURCES (millrace.sources.base.route_keys, the ingest flows' own rule) are not queued. Every refused or ignored
delivery leaves one line in the log saying why (intake.relay_auth)."""

from __future__ import annotations

import argparse
import asyncio
import hmac
import logging
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from intake.emit import WAKE_EVENT, Debouncer, PrefectEmitter, flush_events
from intake.relay_auth import credentials_seen, ignored, loggable, presented_tokens, refused
from intake.relay_writes import DeliveryWriter
from millrace.clients import change_queue, ledger
from millrace.config import Settings
from millrace.events.drain import draining
from millrace.events.log import EventLog
from millrace.events.queue import Change, from_s3
from millrace.events.s3 import DEFAULT_SNS_URL_PATTERN, BadEvent, S3Change, SignatureError, SnsVerifier, parse_body
from millrace.retry import with_retries

log = logging.getLogger("millrace.relay")
TOKEN_HELP = ("set MILLRACE_RELAY_TOKEN to a long random secret, e.g. "
              "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`, and give the same value to the sender "
              "(SNS: ?token= in the subscription URL; MinIO: auth_token; EventBridge: an X-Millrace-Token header)")


class RelaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MILLRACE_RELAY_", extra="ignore", populate_by_name=True)

    token: SecretStr  # required: the relay does not start without one
    # Prefect's own variables serve when the relay's are unset.
    prefect_api_url: str = Field("", validation_alias=AliasChoices("MILLRACE_RELAY_PREFECT_API_URL",
                                                                   "PREFECT_API_URL"))
    prefect_api_key: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices(
        "MILLRACE_RELAY_PREFECT_API_KEY", "PREFECT_API_KEY"))
    prefect_api_auth_string: SecretStr = Field(SecretStr(""), validation_alias=AliasChoices(
        "MILLRACE_RELAY_PREFECT_API_AUTH_STRING", "PREFECT_API_AUTH_STRING"))
    verify_sns: bool = False  # check SNS signatures (on top of the token)
    # SigningCertURL and SubscribeURL must match this: the relay fetches nothing else.
    sns_url_pattern: str = DEFAULT_SNS_URL_PATTERN
    eventbridge_keys_encoded: bool = True
    # Pacing of the wake-up events (intake.emit.Debouncer); the answer to a sender never waits for them.
    debounce_s: float = 1.0
    max_wait_s: float = 5.0
    max_keys: int = 500
    # Also bounds the SNS certificate and SubscribeURL fetches, which a sender does wait for (SNS: 15 s).
    emit_timeout_s: float = 3.0
    retry_delays: list[float] = Field(default_factory=lambda: [0.5, 1.5, 3.0])
    max_body_bytes: int = 1024 * 1024

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value()) < 16:
            raise ValueError("MILLRACE_RELAY_TOKEN must be at least 16 characters")
        return value


def settings_or_exit() -> RelaySettings:
    """The settings from the environment, or exit saying what to set."""
    try:
        settings = RelaySettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        sys.exit(f"millrace relay: cannot start ({problems}). {TOKEN_HELP}")
    if not settings.prefect_api_url:
        sys.exit("millrace relay: cannot start: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api) to the Prefect "
                 "API the events go to")
    return settings


def _reply(code: int, /, **body: Any) -> JSONResponse:
    return JSONResponse(body, status_code=code)


class Relay:
    """The state of a running relay: change queue, emitter, event log, debouncer, the deliveries in progress."""

    def __init__(self, settings: RelaySettings):
        self.settings = settings
        self.token = settings.token.get_secret_value().encode()
        self.url_pattern = re.compile(settings.sns_url_pattern)
        self.emitter = PrefectEmitter(settings.prefect_api_url, api_key=settings.prefect_api_key.get_secret_value(),
                                      auth_string=settings.prefect_api_auth_string.get_secret_value(),
                                      timeout_s=settings.emit_timeout_s, retry_delays=settings.retry_delays)
        core = Settings()
        self.eventlog = EventLog(core.resolved_ledger_url)
        self.queue, self.ledger = change_queue(core), ledger(core)
        self.collection = core.collection
        self.sources = core.sources  # MILLRACE_SOURCES, as the ingest flows read it
        self.verifier = SnsVerifier(self._fetch, settings.sns_url_pattern)
        self.debouncer = Debouncer(self._flush, debounce_s=settings.debounce_s, max_wait_s=settings.max_wait_s,
                                   max_keys=settings.max_keys)
        self.writes = DeliveryWriter(self.queue, self.eventlog, self.debouncer.add)
        self.emit_failing = False
        # Emits get threads of their own: a Prefect that hangs must not take the threads the queue writes run on.
        self.emit_threads = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay-emit")

    def authorized(self, request: Request) -> bool:
        return any(hmac.compare_digest(t.encode(), self.token) for t in presented_tokens(request))

    def _fetch(self, url: str) -> bytes:
        def get() -> bytes:
            response = httpx.get(url, timeout=self.settings.emit_timeout_s)
            response.raise_for_status()
            return response.content

        return with_retries(get, self.settings.retry_delays, f"fetching {url}")

    def _emit(self, events: list[dict]) -> bool:
        """Emit a flush's events; without its wake-up (the first) while a live drain holds the collection. True
        when the wake-up went."""
        if draining(self.ledger, self.collection):
            events = events[1:]
        if events:
            self.emitter.emit(events)
        return bool(events) and events[0]["event"] == WAKE_EVENT

    async def _flush(self, bucket: str, changes: list[S3Change]) -> None:
        events = flush_events(self.collection, bucket, changes)
        try:
            woke = await asyncio.get_running_loop().run_in_executor(self.emit_threads, self._emit, events)
        except Exception as exc:
            # Once per outage, not once per flush: a flood against a dead Prefect would bury the log otherwise.
            if not self.emit_failing:
                log.warning("%s. The changes are queued; the drain's schedule picks them up (further failures are "
                            "not logged until an emit succeeds)", exc)
            self.emit_failing = True
            return
        if self.emit_failing:
            log.info("emitting events to %s again", self.emitter.api_url)
            self.emit_failing = False
        log.info("%s %s: %d changes in bucket %s", "woke the drain of" if woke else "the drain running takes",
                 self.collection, len(events) - 1, bucket)

    def within_sources(self, changes: list[S3Change]) -> tuple[list[tuple[S3Change, Change]], int]:
        """Each change the ingest flows would act on with its queue entry (millrace.events.queue.from_s3: the source
        root and the decoded key below it, the flows' own rule), and how many are left out (keys outside
        MILLRACE_SOURCES, folder markers)."""
        kept = [(c, q) for c in changes for q in from_s3(self.collection, [c], self.sources, "relay")]
        return kept, len(changes) - len(kept)

    async def deliver(self, request: Request, message_id: str, routed: list[tuple[S3Change, Change]]) -> JSONResponse:
        """Queue a delivery's changes once, whatever number of times it arrives (intake.relay_writes)."""
        code, body, first = await self.writes.deliver(message_id, routed)
        if code != 200:
            return refused(request, code, body["detail"])
        if body["status"] == "duplicate" or not first:
            return ignored(request, message_id, "a copy of a delivery already queued", status="duplicate",
                           message_id=message_id)
        return _reply(code, **body)

    async def confirm(self, request: Request, url: str) -> JSONResponse:
        if not self.url_pattern.match(url):
            return refused(request, 403, f"SubscribeURL {url!r} does not match MILLRACE_RELAY_SNS_URL_PATTERN; not "
                                         "confirmed")
        try:
            await asyncio.to_thread(self._fetch, url)
        except Exception as exc:
            return refused(request, 503, f"could not confirm the subscription at its SubscribeURL: {exc}")
        log.info("confirmed SNS subscription")
        return _reply(200, status="confirmed")


def create_app(settings: RelaySettings | None = None) -> FastAPI:
    settings = settings or settings_or_exit()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.relay = Relay(settings)
        try:
            yield
        finally:
            await app.state.relay.debouncer.close()
            app.state.relay.emit_threads.shutdown(wait=False, cancel_futures=True)
            app.state.relay.emitter.close()

    app = FastAPI(title="Millrace S3 event relay", lifespan=lifespan)

    @app.get("/health")
    async def health(request: Request) -> dict:
        relay: Relay = request.app.state.relay
        try:
            queued: int | str = (await asyncio.to_thread(relay.queue.stats, relay.collection)).pending
        except Exception as exc:  # /health answers: it is how an operator finds out what is wrong
            queued = f"unavailable: {type(exc).__name__}: {str(exc)[:200]}"
        return {"status": "ok", "prefect_api_url": relay.emitter.api_url, "collection": relay.collection,
                "queue_pending": queued, "pending_changes": relay.debouncer.pending,
                "emitting": not relay.emit_failing, "verify_sns": settings.verify_sns}

    @app.post("/s3/events")
    async def s3_events(request: Request) -> JSONResponse:
        relay: Relay = request.app.state.relay
        if not relay.authorized(request):
            return refused(request, 401, f"missing or wrong token (sent: {credentials_seen(request)}): send "
                                         "MILLRACE_RELAY_TOKEN as Authorization: Bearer <token> (MinIO's auth_token "
                                         "may also be `Token <token>` or the bare token), an X-Millrace-Token header "
                                         "or ?token=<token>", headers={"WWW-Authenticate": "Bearer"})
        too_big = f"a body over MILLRACE_RELAY_MAX_BODY_BYTES ({settings.max_body_bytes} bytes)"
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            return refused(request, 413, too_big)
        raw = await request.body()
        if len(raw) > settings.max_body_bytes:  # a chunked body declares no length
            return refused(request, 413, too_big)
        try:
            notice = parse_body(raw, message_id=request.headers.get("x-amz-sns-message-id", ""),
                                eventbridge_keys_encoded=settings.eventbridge_keys_encoded)
        except BadEvent as exc:
            return refused(request, 400, str(exc))
        if notice.source == "sns" and settings.verify_sns:
            try:
                await asyncio.to_thread(relay.verifier.verify, notice.envelope)
            except SignatureError as exc:
                return refused(request, 403, f"SNS signature rejected: {exc}")
            except Exception as exc:  # the certificate could not be fetched: SNS should try again
                return refused(request, 503, f"could not check the SNS signature: {type(exc).__name__}: {exc}")
        if notice.action == "subscribe":
            return await relay.confirm(request, notice.subscribe_url)
        if notice.action in ("unsubscribe", "test", "ignored") or not notice.changes:
            reason = notice.reason or {"unsubscribe": "unsubscribed", "test": "s3:TestEvent"}.get(
                notice.action, "no object created/removed records")
            return ignored(request, notice.message_id, reason)
        routed, outside = relay.within_sources(notice.changes)
        if outside:
            where = f"outside MILLRACE_SOURCES {relay.sources}"
            if not routed:
                return ignored(request, notice.message_id, f"all {outside} key(s) lie {where}")
            log.info("delivery %s: %d of %d keys lie %s: not queued", loggable(request, notice.message_id),
                     outside, len(notice.changes), where)
        return await relay.deliver(request, notice.message_id, routed)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m intake.relay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    # No access log: SNS subscriptions carry the token in the query string, which uvicorn would write out.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False, log_level=args.log_level)


if __name__ == "__main__":
    main()

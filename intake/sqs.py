"""S3 -> SQS notifications into the change queue: `python -m intake.sqs` long-polls MILLRACE_SQS_QUEUE_URL, writes
the object changes of each message to the durable change queue (millrace.events.queue) and only then deletes the
messages. The change queue is the commit point: the draining deployment takes its work from there and deletes
nothing from SQS, so a crash between the two leaves at worst a message delivered twice, which is the same change.

Bodies may be bare S3 `Records` documents, SNS envelopes (S3 -> SNS -> SQS) or EventBridge events
(millrace.events.s3.parse_body). S3's test event and notices without object changes are deleted, saying why. A
message that cannot be stored (not a notification, or the change queue refuses the write) is left in the queue: it
comes back after the visibility timeout, and once SQS has delivered it MILLRACE_SQS_MAX_RECEIVES times it is sent
to MILLRACE_SQS_DLQ_URL with `reason` and `receive_count` attributes and deleted here. A queue with its own
RedrivePolicy (maxReceiveCount) has SQS move such messages to its DLQ anyway, without the reason; keep
MILLRACE_SQS_MAX_RECEIVES below that maxReceiveCount so that this consumer gets there first.

After changes are queued, a `millrace.changes.pending` event on `millrace.collection.<name>` wakes the draining
deployment (PREFECT_API_URL; without it, or when the emit fails, the scheduled sweep drains the queue instead), at
most once per MILLRACE_SQS_WAKE_EVERY_S and not while a drain runs. Extra pollers (MILLRACE_SQS_RECEIVERS) join
while the queue is behind; after a short receive the next waits MILLRACE_SQS_BATCH_WINDOW_S, so that a steady stream
arrives in full receives."""

from __future__ import annotations

import argparse
import logging
import math
import os
import signal
import sys
import threading
import time

from pydantic import BaseModel

from intake.emit import EmitError, PrefectEmitter, wake_event
from millrace import clients
from millrace.config import Settings
from millrace.events.drain import draining
from millrace.events.queue import Change
from millrace.events.s3 import BadEvent, Notice, parse_body
from millrace.events.sqs_dlq import DETAIL_CHARS, attributes, send_batch, sqs_client
from millrace.retry import with_retries
from millrace.sources.base import route_keys

log = logging.getLogger("millrace.sqs")
MAX_MESSAGES = 10  # SQS's most per receive
HELP = ("check the queue URL (MILLRACE_SQS_QUEUE_URL), the endpoint (--endpoint-url or AWS_ENDPOINT_URL_SQS, "
        "unset for AWS itself), the region (AWS_REGION) and the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
        "AWS_PROFILE or an instance role with sqs:ReceiveMessage, sqs:DeleteMessage and, for the DLQ, "
        "sqs:SendMessage)")


class SqsUnavailable(RuntimeError):
    """SQS could not be reached or refused us, after the retries; the message says what to check."""


class PollResult(BaseModel):
    """What one receive did with the messages it got."""
    received: int = 0
    queued: int = 0  # changes the change queue accepted (new, or newer than what it held)
    deleted: int = 0  # messages committed (stored, or with nothing to store) and deleted
    dead_lettered: int = 0  # poison messages moved to the DLQ
    poison: int = 0  # poison messages left for redelivery


def emitter_from_env() -> PrefectEmitter | None:
    """A PrefectEmitter for PREFECT_API_URL (with PREFECT_API_KEY or PREFECT_API_AUTH_STRING), None without it."""
    url = os.environ.get("PREFECT_API_URL", "")
    if not url:
        return None
    return PrefectEmitter(url, api_key=os.environ.get("PREFECT_API_KEY", ""),
                          auth_string=os.environ.get("PREFECT_API_AUTH_STRING", ""))


class SqsIntake:
    """One SQS queue feeding one collection's change queue; `poll_once` is one receive, `run` loops it."""

    def __init__(self, settings: Settings, client, emitter: PrefectEmitter | None = None):
        if not settings.sqs_queue_url:
            raise ValueError("no queue to poll: set MILLRACE_SQS_QUEUE_URL")
        self.settings, self.client, self.emitter = settings, client, emitter
        self.queue = clients.change_queue(settings)
        self.url = settings.sqs_queue_url
        self.owed = 0  # changes queued since the last wake-up, not yet announced because of the pacing
        self.woke_at = float("-inf")
        self._pace = threading.Lock()

    def _call(self, what: str, fn):
        try:
            return with_retries(fn, self.settings.retry_delays, f"{what} {self.url}")
        except Exception as exc:
            raise SqsUnavailable(f"{what} {self.url} failed ({type(exc).__name__}: {str(exc)[:300]}); {HELP}") from exc

    def changes(self, notice: Notice, message_id: str) -> list[Change]:
        """The changes of a notice that lie in a configured source, addressed by source and decoded path."""
        found = []
        for c in notice.changes:
            if c.key.endswith("/"):  # a console "folder": an empty marker object, never a document (as in sync)
                continue
            for source, rels in route_keys(c.bucket, [c.key], self.settings.sources).items():
                found += [Change(collection=self.settings.collection, source=source, object=rel, kind=c.kind,
                                 sequencer=c.sequencer, event_time=c.event_time, size=c.size,
                                 origin=f"sqs:{message_id}") for rel in rels]
        return found

    def _classify(self, msg: dict) -> tuple[list[Change] | None, str]:
        """(changes, why): None and the error for a body that is no notification; [] and why for nothing to do."""
        mid = msg["MessageId"]
        try:
            notice = parse_body(msg.get("Body", "").encode(), message_id=f"sqs:{mid}")
        except BadEvent as exc:
            return None, f"bad-event: {exc}"
        if notice.action == "test":
            return [], "an S3 test event (the notification configuration works)"
        if notice.action == "subscribe":  # cross-account SNS -> SQS: someone must confirm it
            return [], f"an SNS subscription confirmation: confirm it at {notice.subscribe_url or 'its SubscribeURL'}"
        if notice.action != "changes":
            return [], f"nothing to index ({notice.action}{': ' + notice.reason if notice.reason else ''})"
        changes = self.changes(notice, mid)
        if not changes:
            return [], f"none of its {len(notice.changes)} object changes lies in MILLRACE_SOURCES"
        return changes, ""

    def _store(self, good: dict[str, list[Change]]) -> tuple[int, dict[str, str]]:
        """Write the changes of all messages in one transaction; (accepted, failed message ids -> error)."""
        try:
            return self.queue.put([c for cs in good.values() for c in cs]), {}
        except Exception as exc:
            if len(good) == 1:
                return 0, {mid: f"queue-write-failed: {type(exc).__name__}: {exc}" for mid in good}
            log.warning("storing the changes of %d messages failed (%s: %s); storing them one message at a time",
                        len(good), type(exc).__name__, str(exc)[:300])
        accepted, failed = 0, {}
        for mid, changes in good.items():  # so that one message the queue cannot take holds back only itself
            try:
                accepted += self.queue.put(changes)
            except Exception as exc:
                failed[mid] = f"queue-write-failed: {type(exc).__name__}: {exc}"
        return accepted, failed

    def poll_once(self) -> PollResult:
        """Receive up to ten messages, store their changes, delete what is committed, dead-letter spent poison."""
        s = self.settings
        # A wake-up held back by the pacing must not wait for a whole long poll to go out.
        wait_s = min(s.sqs_wait_s, max(1, math.ceil(s.sqs_wake_every_s))) if self.owed else s.sqs_wait_s
        answer = self._call("receiving from", lambda: self.client.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=MAX_MESSAGES, WaitTimeSeconds=wait_s,
            VisibilityTimeout=s.sqs_visibility_s, MessageSystemAttributeNames=["ApproximateReceiveCount"],
            MessageAttributeNames=["All"]))
        messages = answer.get("Messages", [])
        result = PollResult(received=len(messages))
        if not messages:
            self._wake(0)
            return result
        by_id = {m["MessageId"]: m for m in messages}
        good: dict[str, list[Change]] = {}
        done: list[str] = []
        errors: dict[str, str] = {}
        for mid, msg in by_id.items():
            changes, why = self._classify(msg)
            if changes is None:
                errors[mid] = why
            elif changes:
                good[mid] = changes
            else:
                log.info("message %s: deleted without queueing anything: %s", mid, why)
                done.append(mid)
        if good:
            result.queued, failed = self._store(good)
            errors.update(failed)
            stored = [mid for mid in good if mid not in failed]
            done += stored
            if stored:
                log.info("queued %d changes of %d messages for collection %s", sum(len(good[m]) for m in stored),
                         len(stored), s.collection)
        result.deleted = self._delete([by_id[mid] for mid in done])
        for mid, error in errors.items():
            if self._poison(by_id[mid], error):
                result.dead_lettered += 1
            else:
                result.poison += 1
        self._wake(result.queued)
        return result

    def _delete(self, messages: list[dict]) -> int:
        if not messages:
            return 0
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        try:
            answer = self._call("deleting messages from", lambda: self.client.delete_message_batch(
                QueueUrl=self.url, Entries=entries))
        except SqsUnavailable as exc:  # committed already: a redelivery re-queues the same changes, harmlessly
            log.warning("%s; the messages will be delivered again", exc)
            return 0
        for failed in answer.get("Failed", []):
            log.warning("SQS did not delete message entry %s: %s %s; it will be delivered again",
                        failed.get("Id"), failed.get("Code"), failed.get("Message"))
        return len(answer.get("Successful", []))

    def _poison(self, msg: dict, error: str) -> bool:
        """Leave a message that cannot be stored for redelivery, or move it to the DLQ once it is spent; True when
        it went to the DLQ."""
        mid, s = msg["MessageId"], self.settings
        count = int(msg.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
        reason, _, detail = error.partition(": ")
        if count < s.sqs_max_receives or not s.sqs_dlq_url:
            log.warning("message %s (receive %d of %d) not stored: %s%s", mid, count, s.sqs_max_receives,
                        error[:DETAIL_CHARS], "" if count < s.sqs_max_receives else
                        "; no MILLRACE_SQS_DLQ_URL: it stays until the queue's retention or RedrivePolicy drops it")
            return False
        entry = {"Id": "0", "MessageBody": msg.get("Body", "") or "-",
                 "MessageAttributes": attributes(reason=reason, detail=detail[:DETAIL_CHARS], receive_count=count,
                                                 origin=f"sqs:{mid}")}
        try:
            sent = send_batch(self.client, s.sqs_dlq_url, [entry], s.retry_delays,
                              f"sending message {mid} to the DLQ {s.sqs_dlq_url}")
        except Exception as exc:
            log.warning("message %s could not be sent to the DLQ (%s: %s); it stays in the queue", mid,
                        type(exc).__name__, str(exc)[:300])
            return False
        if not sent:
            return False
        self._delete([msg])
        log.warning("message %s dead-lettered to %s after %d receives: %s", mid, s.sqs_dlq_url, count,
                    error[:DETAIL_CHARS])
        return True

    def _wake(self, n: int) -> None:
        """Wake the drain for `n` more changes, at most once per sqs_wake_every_s: changes held back go with the
        next wake-up, which a later poll sends (and a run woken meanwhile takes them anyway: it drains everything
        pending). Like the relay's, no wake-up goes while a drain runs."""
        with self._pace:
            self.owed += n
            if not self.owed or time.monotonic() - self.woke_at < self.settings.sqs_wake_every_s:
                return
            n, self.owed = self.owed, 0
            self.woke_at = time.monotonic()  # taken under the lock, so that two pollers do not both wake
        if self.emitter is None:
            log.debug("no PREFECT_API_URL: not waking the drain for %d changes (the sweep takes them)", n)
            return
        try:
            if draining(clients.ledger(self.settings), self.settings.collection):
                return  # the run draining now takes them (millrace.events.drain.draining)
            self.emitter.emit([wake_event(self.settings.collection, n)])
        except EmitError as exc:  # the changes are safe in the change queue; the sweep drains them
            log.warning("could not wake the drain: %s", exc)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set (long polls in progress finish first); SqsUnavailable in any poller stops all and
        is raised here. A poller whose receive came back short lets sqs_batch_window_s pass from that receive's start
        before the next, because a long poll returns as soon as one message is there. One poller runs always; the
        other sqs_receivers - 1 join in once two receives in a row come back full (a backlog, more than one window of
        a stream brings) and leave once a receive comes back short, because under a steady stream more pollers only
        split the messages into more receives, deletes and queue writes. Their order does not matter: the change
        queue keeps an object's latest change by its S3 sequencer."""
        failed: list[BaseException] = []
        behind = threading.Event()

        def poll(extra: bool) -> None:
            full_before = False
            try:
                while not stop.is_set():
                    if extra and not behind.wait(1.0):
                        continue
                    began = time.monotonic()
                    result = self.poll_once()
                    full = result.received >= MAX_MESSAGES
                    if full:
                        if full_before:
                            behind.set()
                    elif extra:
                        behind.clear()
                    elif result.received:
                        stop.wait(max(0.0, self.settings.sqs_batch_window_s - (time.monotonic() - began)))
                    full_before = full
                    if not result.received and self.settings.sqs_wait_s <= 0:
                        stop.wait(1.0)  # a short-polling queue that is empty would otherwise be asked in a busy loop
            except BaseException as exc:
                failed.append(exc)
                stop.set()

        pollers = [threading.Thread(target=poll, args=(i > 0,), name=f"sqs-poll-{i}", daemon=True)
                   for i in range(max(1, self.settings.sqs_receivers))]
        for t in pollers:
            t.start()
        for t in pollers:
            t.join()
        if failed:
            raise failed[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m intake.sqs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoint-url", default=None,
                        help="the SQS endpoint (default: AWS_ENDPOINT_URL_SQS, else AWS itself)")
    parser.add_argument("--once", action="store_true", help="one receive, then exit (for cron and checks)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    if not settings.sqs_queue_url:
        sys.exit("millrace sqs: cannot start: set MILLRACE_SQS_QUEUE_URL to the queue S3 notifications go to")
    emitter = emitter_from_env()
    intake = SqsIntake(settings, sqs_client(settings, args.endpoint_url), emitter)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("polling %s for collection %s (sources: %s; DLQ: %s)", settings.sqs_queue_url, settings.collection,
             ", ".join(settings.sources) or "whole buckets", settings.sqs_dlq_url or "none")
    try:
        if args.once:
            log.info("%s", intake.poll_once().model_dump())
        else:
            intake.run(stop)
    except SqsUnavailable as exc:
        sys.exit(f"millrace sqs: {exc}")
    finally:
        if emitter is not None:
            emitter.close()


if __name__ == "__main__":
    main()

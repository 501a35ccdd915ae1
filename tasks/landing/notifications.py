"""Landing on a bucket, the production way: the bucket sends an `s3:ObjectCreated:*` notification
for each object written under the landing prefix to an SQS queue, and a small consumer turns each
into the landed event (open-source Prefect has no webhooks to receive them itself).

The consumer receives up to 10 messages at a time (long polling: one request per 20 s when
nothing lands), emits one event per landed object, and deletes the messages only once the events
are sent: a consumer that dies in between leaves them on the queue, to be received again after
the queue's visibility timeout (SQS delivers at least once; an event too many is harmless, the
check decides what is new). Messages of other objects, S3's test event and objects the landing
check would not take (tasks/landing/sensor.py is_landed_object) are deleted unannounced.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote_plus

from tasks.landing.sensor import is_landed_object

# The longest long poll SQS allows.
WAIT_SECONDS = 20


def sqs_client() -> Any:
    """boto3's SQS client from the standard AWS configuration. AWS_REGION is honoured as
    everywhere else in the pipeline (boto3 itself reads only AWS_DEFAULT_REGION)."""
    import boto3  # heavy, and only the consumer needs it

    return boto3.client("sqs", region_name=os.environ.get("AWS_REGION") or None)


def landed_locations(body: str, landing: str) -> list[str]:
    """The s3:// URIs of the landed objects of `landing` a message announces. The body is an S3
    event notification, sent to the queue directly or through SNS (`Message` holds it); keys
    come URL-encoded, spaces as `+`."""
    try:
        message = json.loads(body)
        if "Records" not in message and "Message" in message:
            message = json.loads(message["Message"])
        records = message.get("Records", [])
        found = [
            f"s3://{r['s3']['bucket']['name']}/{unquote_plus(r['s3']['object']['key'])}"
            for r in records
            if str(r.get("eventName", "")).startswith("ObjectCreated:")
        ]
    except (ValueError, TypeError, KeyError, AttributeError):
        return []  # not an S3 notification: nothing to announce
    return [location for location in found if is_landed_object(landing, location)]


def consume_once(
    sqs: Any,
    queue_url: str,
    landing: str,
    emit: Callable[[list[str]], None],
    wait_seconds: int = WAIT_SECONDS,
) -> list[str]:
    """Receive one batch of messages from the queue (an SQS client of boto3), `emit` the landed
    objects they announce, then delete them. Returns the URIs emitted. If `emit` fails the
    messages are made visible again at once, for the next receive."""
    answer = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
    )
    messages = answer.get("Messages", [])
    if not messages:
        return []
    handles = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    found = sorted({loc for m in messages for loc in landed_locations(m["Body"], landing)})
    try:
        if found:
            emit(found)
    except BaseException:
        entries = [{**handle, "VisibilityTimeout": 0} for handle in handles]
        sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=entries)
        raise
    sqs.delete_message_batch(QueueUrl=queue_url, Entries=handles)
    return found

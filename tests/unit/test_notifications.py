"""The production path for a landing bucket against the S3 API server's own SQS: the bucket
notifies a queue of each object created, and one pass of the consumer
(tasks/landing/notifications.py) announces the landed ones and takes their messages off."""

from __future__ import annotations

import pytest

from tasks.common import store
from tasks.landing.notifications import consume_once, sqs_client
from tests.s3 import REGION


@pytest.fixture
def notified(s3_env, s3_bucket) -> tuple[object, str, str]:
    """(an SQS client, the queue the bucket notifies of objects created, the landing prefix)."""
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    sqs = sqs_client()  # endpoint, region and keys from the environment, as in production
    queue_url = sqs.create_queue(QueueName=f"{bucket}-landed")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    boto3.client("s3", region_name=REGION).put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {"QueueArn": arn["Attributes"]["QueueArn"], "Events": ["s3:ObjectCreated:*"]}
            ]
        },
    )
    return sqs, queue_url, f"{s3_bucket}/landing"


def consume(notified, emit=None) -> list[str]:
    """One pass of the consumer; the URIs it emitted."""
    sqs, queue_url, landing = notified
    emitted: list[str] = []
    found = consume_once(sqs, queue_url, landing, emit or emitted.extend, wait_seconds=0)
    assert emit or found == emitted
    return found


def test_each_landed_object_is_announced_once_by_its_uri_and_nothing_else_is(notified):
    landing = notified[2]
    for name in ("b.csv", "a 2026-12-01.csv", "b.csv.sha256", ".c.csv", "d.csv.part", "e.txt"):
        store.write(f"{landing}/{name}", b"x\n")
    store.write(f"{landing}/older/f.csv", b"x\n")
    store.write(f"{store.parent_of(landing)}/elsewhere/g.csv", b"x\n")
    announced = []
    while found := consume(notified):  # up to 10 messages a pass
        announced += found
    assert sorted(announced) == [f"{landing}/a 2026-12-01.csv", f"{landing}/b.csv"]
    assert messages_left(notified) == 0


def messages_left(notified) -> int:
    """Messages on the queue, received or not."""
    sqs, queue_url, _ = notified
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[name]) for name in names)


def test_messages_whose_announcement_failed_are_received_again(notified):
    landing = notified[2]
    store.write(f"{landing}/a.csv", b"x\n")
    consume(notified)  # S3's test event of the new configuration, if any, and a.csv

    store.write(f"{landing}/b.csv", b"x\n")

    def server_down(locations: list[str]) -> None:
        raise OSError("connection refused")

    with pytest.raises(OSError, match="connection refused"):
        consume(notified, server_down)
    assert consume(notified) == [f"{landing}/b.csv"]

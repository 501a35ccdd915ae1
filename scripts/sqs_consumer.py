"""Announce objects landing on a bucket from its notifications: receive the bucket's
`s3:ObjectCreated:*` notifications from an SQS queue and emit the landed event for each object
under the landing prefix (tasks/landing/notifications.py). The production alternative to the
local stack's sensor, which lists the prefix: no listing, and an event within a second of the
upload. Run it wherever the Prefect API is reachable (a small container next to the server):

    PREFECT_API_URL=... python -m scripts.sqs_consumer \\
        --queue-url https://sqs.eu-west-1.amazonaws.com/123456789012/sales-landed \\
        --landing s3://sales-lake/landing

The SQS client takes the standard AWS configuration (AWS_REGION, AWS_ENDPOINT_URL, the
credential chain); it needs sqs:ReceiveMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility
on the queue.
"""

from __future__ import annotations

import argparse
import sys
import time

from tasks.common import store
from tasks.landing.events import emit_landed
from tasks.landing.notifications import consume_once, sqs_client

# After an error (the queue or the Prefect API not answering), the next try waits this long.
RETRY_SECONDS = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.sqs_consumer")
    parser.add_argument("--queue-url", required=True, help="the queue the bucket notifies")
    parser.add_argument("--landing", required=True, help="s3://bucket/prefix of landed files")
    args = parser.parse_args(argv)
    if not store.is_remote(args.landing):
        print(f"error: --landing {args.landing}: expected s3://bucket/prefix", file=sys.stderr)
        return 2
    sqs = sqs_client()
    print(f"announcing objects under {args.landing} from {args.queue_url}", flush=True)
    while True:
        try:
            found = consume_once(sqs, args.queue_url, args.landing, emit_landed)
        except Exception as exc:  # one line, then try again: the messages stay on the queue
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"error: {first}; trying again in {RETRY_SECONDS:g} s", flush=True)
            time.sleep(RETRY_SECONDS)
            continue
        if found:
            print(f"announced {', '.join(map(store.name_of, found))}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

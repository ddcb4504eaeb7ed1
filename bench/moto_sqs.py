"""What moto's SQS costs as its queue fills: the harness behind `bench/continuous.py --wiring sqs`, not Millrace.
moto looks at every message in a queue on each call, so sends, receives and deletes slow down with the backlog,
which AWS's SQS does not. In-process (moto's mock, no HTTP server):

    python bench/moto_sqs.py --messages 3000 --chunk 500"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--pairs", type=int, default=30, help="receive+delete pairs timed at the full backlog")
    args = ap.parse_args()

    import boto3
    from moto import mock_aws

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="backlog")["QueueUrl"]
        for start in range(0, args.messages, args.chunk):
            t = time.perf_counter()
            for _ in range(args.chunk):
                sqs.send_message(QueueUrl=url, MessageBody="x" * 800)
            print(f"sends {start + 1}-{start + args.chunk}: {time.perf_counter() - t:.2f} s", flush=True)
        t = time.perf_counter()
        for _ in range(args.pairs):
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60)["Messages"]
            sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                                            for i, m in enumerate(got)])
        print(f"{args.pairs} receive+delete pairs at a backlog of ~{args.messages}: {time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()

"""The client side of `dangan bench s3`: boto3 against the gateway's S3 service.

    python s3_client.py bucket
    python s3_client.py put FILE KEY single|multipart
    python s3_client.py get KEY SIZE
    python s3_client.py small COUNT SIZE THREADS

with S3_ENDPOINT, S3_BUCKET, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment.
Each prints one JSON line (seconds, bytes, md5 or latencies); the interpreter's start and
boto3's import are not timed. Embedded in the `dangan` binary (src/bench/s3.rs).
"""

import concurrent.futures
import hashlib
import json
import os
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

MIB = 1 << 20


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["S3_ENDPOINT"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, max_pool_connections=32),
    )


class Md5Sink:
    """A write-only file that keeps only the MD5 and the length of what it was given."""

    def __init__(self):
        self.md5 = hashlib.md5()
        self.n = 0

    def write(self, b):
        self.md5.update(b)
        self.n += len(b)
        return len(b)


def put(path, key, mode):
    s3 = client()
    bucket = os.environ["S3_BUCKET"]
    size = os.path.getsize(path)
    if mode == "single":
        config = TransferConfig(multipart_threshold=size + 1, use_threads=False)
    else:
        config = TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB, max_concurrency=4)
    started = time.perf_counter()
    s3.upload_file(path, bucket, key, Config=config)
    took = time.perf_counter() - started
    print(json.dumps({"seconds": took, "bytes": size}))


def get(key, size):
    s3 = client()
    bucket = os.environ["S3_BUCKET"]
    sink = Md5Sink()
    started = time.perf_counter()
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(chunk_size=MIB):
        sink.write(chunk)
    took = time.perf_counter() - started
    assert sink.n == size, f"read {sink.n} bytes of {size}"
    print(json.dumps({"seconds": took, "bytes": sink.n, "md5": sink.md5.hexdigest()}))


def small(count, size, threads):
    s3 = client()
    bucket = os.environ["S3_BUCKET"]
    body = os.urandom(size)

    def one(i):
        started = time.perf_counter()
        s3.put_object(Bucket=bucket, Key=f"small/{i:06d}", Body=body)
        return time.perf_counter() - started

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        times = list(pool.map(one, range(count)))
    took = time.perf_counter() - started
    print(json.dumps({"seconds": took, "latencies": times}))


if __name__ == "__main__":
    what = sys.argv[1]
    if what == "bucket":
        started = time.perf_counter()
        client().create_bucket(Bucket=os.environ["S3_BUCKET"])
        print(json.dumps({"seconds": time.perf_counter() - started}))
    elif what == "put":
        put(sys.argv[2], sys.argv[3], sys.argv[4])
    elif what == "get":
        get(sys.argv[2], int(sys.argv[3]))
    elif what == "small":
        small(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(f"unknown: {what}")

"""Real S3 clients (boto3 and botocore from PyPI) against a Dangan gateway's S3 service.

Run by tests/it/s3.rs with the venv scripts/test-deps.sh makes:
    python clients.py SCENARIO
with S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and S3_BUCKET in the environment
(and S3_OTHER_BUCKET: a bucket of another department). Each check prints `ok: ...`; the
first failure raises (exit status 1). Lines `object: BUCKET KEY VERSION_ID` name objects the
Rust side then reads as ordinary documents.
"""

import base64
import concurrent.futures
import datetime
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import boto3
import botocore
import botocore.auth
from botocore.config import Config
from botocore.exceptions import ClientError

ENDPOINT = os.environ["S3_ENDPOINT"]
BUCKET = os.environ["S3_BUCKET"]


def client(secret=None, key_id=None):
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id=key_id or os.environ["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=secret or os.environ["AWS_SECRET_ACCESS_KEY"],
        config=Config(
            s3={"addressing_style": "path"},
            retries={"max_attempts": 1},
            max_pool_connections=32,
        ),
    )


def ok(what):
    print(f"ok: {what}", flush=True)


def code_of(call):
    """The S3 error code `call` fails with (None if it succeeds)."""
    try:
        call()
    except ClientError as e:
        return e.response["Error"]["Code"]
    return None


def expect_code(want, call, what):
    got = code_of(call)
    assert got in want if isinstance(want, tuple) else got == want, f"{what}: {got!r}, not {want!r}"
    ok(f"{what} -> {got}")


def basic():
    s3 = client()
    s3.create_bucket(Bucket=BUCKET)
    ok("create bucket")
    expect_code("BucketAlreadyOwnedByYou", lambda: s3.create_bucket(Bucket=BUCKET), "create again")
    s3.head_bucket(Bucket=BUCKET)
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert BUCKET in names, names
    ok("head and list buckets")

    body = os.urandom(3 * 1024 * 1024 + 12345)
    md5 = hashlib.md5(body).hexdigest()
    put = s3.put_object(
        Bucket=BUCKET,
        Key="docs/a.bin",
        Body=body,
        ContentType="application/x-test",
        Metadata={"clerk": "li", "case": "42"},
        ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),
    )
    assert put["ETag"] == f'"{md5}"', put["ETag"]
    first_version = put["VersionId"]
    ok("put with Content-MD5, ETag is the MD5")

    got = s3.get_object(Bucket=BUCKET, Key="docs/a.bin")
    assert got["Body"].read() == body
    assert got["ETag"] == f'"{md5}"' and got["ContentType"] == "application/x-test"
    assert got["Metadata"] == {"clerk": "li", "case": "42"}, got["Metadata"]
    ok("get: bytes, ETag, Content-Type, metadata")

    part = s3.get_object(Bucket=BUCKET, Key="docs/a.bin", Range="bytes=1000-2099999")
    assert part["Body"].read() == body[1000:2100000]
    assert part["ContentRange"] == f"bytes 1000-2099999/{len(body)}", part["ContentRange"]
    tail = s3.get_object(Bucket=BUCKET, Key="docs/a.bin", Range="bytes=-100")
    assert tail["Body"].read() == body[-100:]
    ok("range gets")
    expect_code(
        "InvalidRange",
        lambda: s3.get_object(Bucket=BUCKET, Key="docs/a.bin", Range=f"bytes={len(body)}-"),
        "range past the end",
    )

    head = s3.head_object(Bucket=BUCKET, Key="docs/a.bin")
    assert head["ContentLength"] == len(body) and head["ETag"] == f'"{md5}"'
    assert head["Metadata"] == {"clerk": "li", "case": "42"}
    ok("head")

    # A new PUT of the name is a new version; the old one stays a document.
    newer = b"the second version"
    put2 = s3.put_object(Bucket=BUCKET, Key="docs/a.bin", Body=newer)
    assert put2["VersionId"] != first_version
    assert s3.get_object(Bucket=BUCKET, Key="docs/a.bin")["Body"].read() == newer
    ok("a new PUT supersedes")
    print(f"object: {BUCKET} docs/a.bin {put2['VersionId']} {first_version}", flush=True)
    old = s3.get_object(Bucket=BUCKET, Key="docs/a.bin", VersionId=first_version)
    assert old["Body"].read() == body and old["VersionId"] == first_version
    ok("the older version by its version id")
    expect_code(
        "NoSuchVersion",
        lambda: s3.get_object(Bucket=BUCKET, Key="docs/a.bin", VersionId="00" * 32),
        "an unknown version id",
    )
    old_head = s3.head_object(Bucket=BUCKET, Key="docs/a.bin", VersionId=first_version)
    assert old_head["ContentLength"] == len(body) and old_head["ETag"] == f'"{md5}"', old_head
    assert old_head["Metadata"] == {"clerk": "li", "case": "42"} and old_head["VersionId"] == first_version
    assert old["ContentType"] == "application/x-test" and old["ETag"] == f'"{md5}"', old
    ok("an older version keeps its size, ETag, Content-Type and metadata")

    third = s3.put_object(Bucket=BUCKET, Key="docs/a.bin", Body=b"third")["VersionId"]
    s3.put_object(Bucket=BUCKET, Key="docs/b.bin", Body=b"b")
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix="docs/")
    got = [(v["Key"], v["VersionId"], v["IsLatest"], v["Size"], v["ETag"]) for v in listed["Versions"]]
    assert got[:3] == [
        ("docs/a.bin", third, True, 5, '"%s"' % hashlib.md5(b"third").hexdigest()),
        ("docs/a.bin", put2["VersionId"], False, len(newer), '"%s"' % hashlib.md5(newer).hexdigest()),
        ("docs/a.bin", first_version, False, len(body), f'"{md5}"'),
    ], got
    assert [g[0] for g in got[3:]] == ["docs/b.bin"] and got[3][2] and not listed["IsTruncated"], got
    ok("ListObjectVersions: every version of a name, newest first")
    paged = []
    pages = s3.get_paginator("list_object_versions").paginate(
        Bucket=BUCKET, Prefix="docs/", PaginationConfig={"PageSize": 2}
    )
    for page in pages:
        assert len(page.get("Versions", [])) <= 2
        paged += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
    assert paged == [(g[0], g[1]) for g in got], paged
    top = s3.list_object_versions(Bucket=BUCKET, Delimiter="/")
    assert "docs/" in [p["Prefix"] for p in top.get("CommonPrefixes", [])], top
    assert all("/" not in v["Key"] for v in top.get("Versions", [])), top
    ok("ListObjectVersions pages by key and version marker, and rolls up prefixes")

    s3.put_object(Bucket=BUCKET, Key="src.txt", Body=b"copied bytes", ContentType="text/plain", Metadata={"k": "v"})
    copied = s3.copy_object(Bucket=BUCKET, Key="copies/dst.txt", CopySource={"Bucket": BUCKET, "Key": "src.txt"})
    assert copied["CopyObjectResult"]["ETag"] == '"%s"' % hashlib.md5(b"copied bytes").hexdigest()
    dst = s3.get_object(Bucket=BUCKET, Key="copies/dst.txt")
    assert dst["Body"].read() == b"copied bytes" and dst["ContentType"] == "text/plain"
    assert dst["Metadata"] == {"k": "v"}, dst["Metadata"]
    ok("copy keeps bytes and metadata")
    replaced = s3.copy_object(
        Bucket=BUCKET,
        Key="copies/dst2.txt",
        CopySource={"Bucket": BUCKET, "Key": "docs/a.bin", "VersionId": first_version},
        MetadataDirective="REPLACE",
        ContentType="application/pdf",
        Metadata={"new": "1"},
    )
    dst2 = s3.get_object(Bucket=BUCKET, Key="copies/dst2.txt")
    assert dst2["Body"].read() == body and dst2["ContentType"] == "application/pdf"
    assert dst2["Metadata"] == {"new": "1"} and replaced["CopySourceVersionId"] == first_version
    ok("copy of an older version with replaced metadata")

    for k in ("batch/1", "batch/2"):
        s3.put_object(Bucket=BUCKET, Key=k, Body=k.encode())
    gone = s3.delete_objects(
        Bucket=BUCKET,
        Delete={"Objects": [{"Key": "batch/1"}, {"Key": "batch/2"}, {"Key": "batch/never"}]},
    )
    assert sorted(d["Key"] for d in gone["Deleted"]) == ["batch/1", "batch/2", "batch/never"], gone
    assert not gone.get("Errors")
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket=BUCKET, Key="batch/2"), "get after DeleteObjects")

    expect_code(
        "BadDigest",
        lambda: s3.put_object(
            Bucket=BUCKET,
            Key="docs/bad.bin",
            Body=b"some bytes",
            ContentMD5=base64.b64encode(hashlib.md5(b"other bytes").digest()).decode(),
        ),
        "wrong Content-MD5",
    )
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket=BUCKET, Key="docs/bad.bin"), "the bad put left no name")
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket=BUCKET, Key="nope"), "unknown key")
    expect_code("404", lambda: s3.head_object(Bucket=BUCKET, Key="nope"), "head unknown key")
    expect_code("NoSuchBucket", lambda: s3.get_object(Bucket="no-such-bucket", Key="k"), "unknown bucket")
    expect_code("NoSuchBucket", lambda: s3.list_objects_v2(Bucket="no-such-bucket"), "list unknown bucket")
    expect_code("BucketNotEmpty", lambda: s3.delete_bucket(Bucket=BUCKET), "delete a bucket that holds names")

    s3.put_object(Bucket=BUCKET, Key="gone.txt", Body=b"soon gone")
    s3.delete_object(Bucket=BUCKET, Key="gone.txt")
    expect_code("NoSuchKey", lambda: s3.get_object(Bucket=BUCKET, Key="gone.txt"), "get after delete")
    s3.delete_object(Bucket=BUCKET, Key="gone.txt")
    ok("delete, twice")

    empty = "empty-" + BUCKET
    s3.create_bucket(Bucket=empty)
    s3.delete_bucket(Bucket=empty)
    expect_code("404", lambda: s3.head_bucket(Bucket=empty), "head a deleted bucket")
    aws_cli()


def aws_cli():
    """The AWS CLI (awscli from PyPI, the venv's `aws`): cp up and down, ls, rm."""
    aws = [os.path.join(os.path.dirname(sys.executable), "aws"), "--endpoint-url", ENDPOINT]
    env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1")

    def run(*args):
        out = subprocess.run(aws + list(args), env=env, capture_output=True, text=True)
        assert out.returncode == 0, f"aws {' '.join(args)}: {out.returncode}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "up.bin")
        data = os.urandom(2 * 1024 * 1024 + 7)
        with open(src, "wb") as f:
            f.write(data)
        run("s3", "cp", src, f"s3://{BUCKET}/cli/up.bin")
        listed = run("s3", "ls", f"s3://{BUCKET}/cli/")
        assert "up.bin" in listed and str(len(data)) in listed, listed
        back = os.path.join(d, "down.bin")
        run("s3", "cp", f"s3://{BUCKET}/cli/up.bin", back)
        with open(back, "rb") as f:
            assert f.read() == data
        run("s3", "rm", f"s3://{BUCKET}/cli/up.bin")
        # `aws s3 ls` of an empty prefix exits 1 and prints nothing.
        gone = subprocess.run(aws + ["s3", "ls", f"s3://{BUCKET}/cli/"], env=env, capture_output=True, text=True)
        assert gone.returncode == 1 and "up.bin" not in gone.stdout, (gone.returncode, gone.stdout)
    ok("aws s3 cp, ls, cp back, rm")


def sha_md5s(path, chunk):
    """(sha256 of the file, the MD5 of each `chunk`-sized part) of `path`."""
    h, md5s = hashlib.sha256(), []
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            md5s.append(hashlib.md5(b).digest())
    return h.hexdigest(), md5s


def streamed_sha(s3, key, **extra):
    """sha256 and length of an object read with one streamed GET."""
    body = s3.get_object(Bucket=BUCKET, Key=key, **extra)["Body"]
    h, n = hashlib.sha256(), 0
    for b in iter(lambda: body.read(1 << 20), b""):
        h.update(b)
        n += len(b)
    return h.hexdigest(), n


def multipart():
    """Multipart uploads: boto3's upload_file and the AWS CLI in parallel parts (S3_MP_MIB,
    40 unless set), read back identical, by a range across a part boundary, ETags `-N`; the
    low-level calls: list parts and uploads, bad order, unknown part, too small, abort."""
    from boto3.s3.transfer import TransferConfig

    s3 = client()
    s3.create_bucket(Bucket=BUCKET)
    size = int(os.environ.get("S3_MP_MIB", "40")) << 20
    chunk = 8 << 20
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "big.bin")
        with open(src, "wb") as f:
            for _ in range(size // (1 << 20)):
                f.write(os.urandom(1 << 20))
            f.write(os.urandom(12345))
        size += 12345
        sha, md5s = sha_md5s(src, chunk)
        etag = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"
        cfg = TransferConfig(multipart_threshold=chunk, multipart_chunksize=chunk, max_concurrency=4)
        started = time.monotonic()
        s3.upload_file(src, BUCKET, "big/boto3.bin", Config=cfg)
        took = time.monotonic() - started
        head = s3.head_object(Bucket=BUCKET, Key="big/boto3.bin")
        assert head["ETag"].strip('"') == etag, (head["ETag"], etag)
        assert head["ContentLength"] == size
        ok(f"upload_file of {size} bytes in {len(md5s)} parts, 4 at a time ({took:.1f} s), ETag {etag}")
        assert streamed_sha(s3, "big/boto3.bin") == (sha, size)
        ok("read back identical")
        with open(src, "rb") as f:
            f.seek(chunk - 100)
            want = f.read(200)
        got = s3.get_object(Bucket=BUCKET, Key="big/boto3.bin", Range=f"bytes={chunk - 100}-{chunk + 99}")["Body"].read()
        assert got == want
        ok("range across a part boundary")
        whole = hashlib.md5()
        with open(src, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                whole.update(b)
        print(f"object: {BUCKET} big/boto3.bin {head['VersionId']} {whole.hexdigest()}", flush=True)

        aws = [os.path.join(os.path.dirname(sys.executable), "aws"), "--endpoint-url", ENDPOINT]
        env = dict(os.environ, AWS_DEFAULT_REGION="us-east-1")
        out = subprocess.run(aws + ["s3", "cp", src, f"s3://{BUCKET}/big/cli.bin"], env=env, capture_output=True, text=True)
        assert out.returncode == 0, f"aws s3 cp: {out.returncode}\n{out.stdout}\n{out.stderr}"
        head = s3.head_object(Bucket=BUCKET, Key="big/cli.bin")
        assert head["ETag"].strip('"').endswith(f"-{len(md5s)}"), head["ETag"]
        back = os.path.join(d, "back.bin")
        out = subprocess.run(aws + ["s3", "cp", f"s3://{BUCKET}/big/cli.bin", back], env=env, capture_output=True, text=True)
        assert out.returncode == 0, f"aws s3 cp back: {out.returncode}\n{out.stdout}\n{out.stderr}"
        assert sha_md5s(back, chunk)[0] == sha
        ok(f"aws s3 cp up in parts and back, identical, ETag {head['ETag']}")

    key = "parts/low-level"
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key, ContentType="application/x-parts")["UploadId"]
    one, two = os.urandom(5 << 20), os.urandom(1000)
    e2 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=2, Body=two)["ETag"]
    e1 = s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=one)["ETag"]
    assert e1.strip('"') == hashlib.md5(one).hexdigest() and e2.strip('"') == hashlib.md5(two).hexdigest()
    parts = s3.list_parts(Bucket=BUCKET, Key=key, UploadId=up)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts] == [(1, len(one), e1), (2, len(two), e2)], parts
    ok("upload parts out of order, list parts")
    uploads = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert [(u["Key"], u["UploadId"]) for u in uploads] == [(key, up)], uploads
    ok("list uploads")

    def complete(upload, parts, k=key):
        return lambda: s3.complete_multipart_upload(
            Bucket=BUCKET, Key=k, UploadId=upload,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})

    expect_code("InvalidPartOrder", complete(up, [(2, e2), (1, e1)]), "complete in the wrong order")
    expect_code("InvalidPart", complete(up, [(1, e1), (3, e2)]), "complete with a part never uploaded")
    expect_code("InvalidPart", complete(up, [(1, e2), (2, e2)]), "complete with a wrong ETag")
    small = s3.create_multipart_upload(Bucket=BUCKET, Key="parts/small")["UploadId"]
    s1 = s3.upload_part(Bucket=BUCKET, Key="parts/small", UploadId=small, PartNumber=1, Body=b"x" * 1000)["ETag"]
    s2 = s3.upload_part(Bucket=BUCKET, Key="parts/small", UploadId=small, PartNumber=2, Body=b"y")["ETag"]
    expect_code("EntityTooSmall", complete(small, [(1, s1), (2, s2)], "parts/small"), "complete with a small part")
    done = complete(up, [(1, e1), (2, e2)])()
    want = f"{hashlib.md5(hashlib.md5(one).digest() + hashlib.md5(two).digest()).hexdigest()}-2"
    assert done["ETag"].strip('"') == want, (done["ETag"], want)
    got = s3.get_object(Bucket=BUCKET, Key=key)
    assert got["Body"].read() == one + two and got["ContentType"] == "application/x-parts"
    assert got["ETag"].strip('"') == want
    ok("complete: the parts in order, ETag -2, Content-Type kept")
    expect_code("NoSuchUpload", lambda: s3.list_parts(Bucket=BUCKET, Key=key, UploadId=up), "list parts once completed")

    s3.abort_multipart_upload(Bucket=BUCKET, Key="parts/small", UploadId=small)
    expect_code("NoSuchUpload", lambda: s3.list_parts(Bucket=BUCKET, Key="parts/small", UploadId=small), "list parts once aborted")
    expect_code("NoSuchUpload", lambda: s3.upload_part(Bucket=BUCKET, Key="parts/small", UploadId=small, PartNumber=3, Body=b"z"), "upload a part once aborted")
    expect_code("NoSuchUpload", complete(small, [(1, s1)], "parts/small"), "complete once aborted")
    expect_code("NoSuchUpload", lambda: s3.abort_multipart_upload(Bucket=BUCKET, Key="parts/small", UploadId=small), "abort again")
    expect_code(("404", "NoSuchKey"), lambda: s3.head_object(Bucket=BUCKET, Key="parts/small"), "an aborted upload leaves no object")
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    ok("abort")


def listing():
    s3 = client()
    s3.create_bucket(Bucket=BUCKET)
    n = 1500
    keys = [f"dir{i % 3}/obj{i:05d}" for i in range(n)]

    def put(k):
        s3.put_object(Bucket=BUCKET, Key=k, Body=k.encode())

    # Within the gateway's max_transfers (16): past it, SlowDown.
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        list(pool.map(put, keys))
    ok(f"{n} parallel puts")

    seen = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, PaginationConfig={"PageSize": 400}):
        assert page["KeyCount"] <= 400
        seen += [o["Key"] for o in page.get("Contents", [])]
    assert seen == sorted(keys), (len(seen), seen[:3])
    ok("paginated listing sees every key once, in order")

    first = s3.list_objects_v2(Bucket=BUCKET)
    assert first["KeyCount"] == 1000 and first["IsTruncated"], first["KeyCount"]
    rest = s3.list_objects_v2(Bucket=BUCKET, ContinuationToken=first["NextContinuationToken"])
    assert rest["KeyCount"] == 500 and not rest["IsTruncated"]
    ok("1000 then 500 with a continuation token")

    one = s3.list_objects_v2(Bucket=BUCKET, Prefix="dir1/")
    assert one["KeyCount"] == 500 and all(o["Key"].startswith("dir1/") for o in one["Contents"])
    ok("prefix")
    top = s3.list_objects_v2(Bucket=BUCKET, Delimiter="/")
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["dir0/", "dir1/", "dir2/"], top
    assert "Contents" not in top or not top["Contents"]
    ok("delimiter rolls up common prefixes")
    after = s3.list_objects_v2(Bucket=BUCKET, StartAfter="dir2/obj01400")
    assert [o["Key"] for o in after["Contents"]][:1] == ["dir2/obj01403"], after["Contents"][:1]
    ok("start-after")
    obj = s3.list_objects_v2(Bucket=BUCKET, Prefix="dir0/obj00000")["Contents"][0]
    assert obj["Size"] == len("dir0/obj00000") and obj["ETag"] == '"%s"' % hashlib.md5(b"dir0/obj00000").hexdigest()
    ok("listed size and ETag")


def shifted_clock(offset):
    """Makes botocore sign with a clock `offset` away from the real one; returns the undo."""
    real = botocore.auth.get_current_datetime
    botocore.auth.get_current_datetime = lambda *a, **k: real(*a, **k) + offset

    def undo():
        botocore.auth.get_current_datetime = real

    return undo


def auth():
    expect_code("SignatureDoesNotMatch", lambda: client(secret="0" * 40).list_buckets(), "wrong secret")
    expect_code(
        "InvalidAccessKeyId",
        lambda: client(key_id="DGNNOTAKEY0000000000").list_buckets(),
        "unknown access key",
    )
    s3 = client()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key="p.txt", Body=b"presigned bytes")

    undo = shifted_clock(datetime.timedelta(minutes=30))
    try:
        expect_code("RequestTimeTooSkewed", lambda: client().list_buckets(), "a clock 30 minutes ahead")
    finally:
        undo()
    undo = shifted_clock(datetime.timedelta(minutes=-20))
    try:
        expect_code("RequestTimeTooSkewed", lambda: client().list_buckets(), "a clock 20 minutes behind")
    finally:
        undo()
    undo = shifted_clock(datetime.timedelta(minutes=5))
    try:
        client().list_buckets()
        ok("a clock 5 minutes ahead is within the 15 allowed")
    finally:
        undo()
    client().list_buckets()
    ok("the real clock works again")

    url = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "p.txt"}, ExpiresIn=300)
    assert urllib.request.urlopen(url).read() == b"presigned bytes"
    ok("presigned GET")
    short = s3.generate_presigned_url("get_object", Params={"Bucket": BUCKET, "Key": "p.txt"}, ExpiresIn=1)
    time.sleep(2)
    try:
        urllib.request.urlopen(short)
        raise AssertionError("an expired presigned URL was served")
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        assert e.code == 403 and "<Code>AccessDenied</Code>" in body, (e.code, body)
    ok("expired presigned GET -> AccessDenied")
    try:
        urllib.request.urlopen(url.replace("Signature=", "Signature=0"))
        raise AssertionError("an altered presigned URL was served")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    ok("altered presigned GET -> 403")
    try:
        urllib.request.urlopen(f"{ENDPOINT}/{BUCKET}/p.txt")
        raise AssertionError("an anonymous GET was served")
    except urllib.error.HTTPError as e:
        assert e.code == 403, e.code
    ok("anonymous GET -> 403")

    other = os.environ["S3_OTHER_BUCKET"]
    expect_code("403", lambda: s3.head_bucket(Bucket=other), "head another department's bucket")
    expect_code("AccessDenied", lambda: s3.put_object(Bucket=other, Key="x", Body=b"x"), "put into it")
    expect_code("AccessDenied", lambda: s3.list_objects_v2(Bucket=other), "list it")
    expect_code("AccessDenied", lambda: s3.delete_bucket(Bucket=other), "delete it")
    expect_code("BucketAlreadyExists", lambda: s3.create_bucket(Bucket=other), "create it")


if __name__ == "__main__":
    {"basic": basic, "listing": listing, "auth": auth, "multipart": multipart}[sys.argv[1]]()
    print("done", flush=True)

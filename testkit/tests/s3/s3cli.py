#!/usr/bin/env python3
"""A real S3 client (boto3) for testkit/tests/s3_gateway.rs: one operation
per run, results as JSON on stdout; an S3 error prints `ERROR <Code>` and
exits 3 so the test can assert S3's code.

Endpoint and keys from WEFT_S3_ENDPOINT, WEFT_S3_ACCESS_KEY,
WEFT_S3_SECRET_KEY (WEFT_S3_REGION, default us-east-1).
"""
import base64
import hashlib
import http.client
import json
import struct
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib

import boto3
from botocore.client import Config
from botocore.exceptions import ClientError


def client():
    endpoint = os.environ["WEFT_S3_ENDPOINT"]
    style = "path"
    domain = os.environ.get("WEFT_S3_VHOST_DOMAIN")
    if domain:
        # Virtual-host style: BUCKET.DOMAIN, every such name resolved to
        # the gateway's loopback address (no DNS involved).
        import socket

        real = socket.getaddrinfo

        def loopback(host, *a, **kw):
            if host == domain or host.endswith("." + domain):
                host = "127.0.0.1"
            return real(host, *a, **kw)

        socket.getaddrinfo = loopback
        endpoint = endpoint.replace("127.0.0.1", domain)
        style = "virtual"
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=os.environ["WEFT_S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["WEFT_S3_SECRET_KEY"],
        region_name=os.environ.get("WEFT_S3_REGION", "us-east-1"),
        config=Config(
            s3={"addressing_style": style},
            retries={"max_attempts": 1},
            signature_version="s3v4",
        ),
    )


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


SUMS = ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256", "ChecksumCRC64NVME")


def sums(r):
    """The checksums an answer carries, by algorithm."""
    return {k[len("Checksum"):]: r[k] for k in SUMS if k in r}


def local_sums(data):
    """CRC32, SHA1 and SHA256 of data, computed here (not by botocore)."""
    b64 = lambda b: base64.b64encode(b).decode()
    return {
        "CRC32": b64(struct.pack(">I", zlib.crc32(data))),
        "SHA1": b64(hashlib.sha1(data).digest()),
        "SHA256": b64(hashlib.sha256(data).digest()),
    }


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def listing(s3, bucket, prefix="", delimiter="", max_keys=1000, start_after="", v1=False):
    """Every page, following continuation tokens (or markers)."""
    keys, prefixes, pages = [], [], 0
    kw = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": max_keys}
    if delimiter:
        kw["Delimiter"] = delimiter
    if start_after:
        kw["Marker" if v1 else "StartAfter"] = start_after
    while True:
        r = s3.list_objects(**kw) if v1 else s3.list_objects_v2(**kw)
        pages += 1
        keys += [o["Key"] for o in r.get("Contents", [])]
        prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
        if not r.get("IsTruncated"):
            break
        if v1:
            kw["Marker"] = r.get("NextMarker") or r["Contents"][-1]["Key"]
        else:
            kw["ContinuationToken"] = r["NextContinuationToken"]
    return {"keys": keys, "prefixes": prefixes, "pages": pages}


def main(argv):
    s3 = client()
    op, args = argv[0], argv[1:]
    if op == "mb":
        s3.create_bucket(Bucket=args[0])
        return {}
    if op == "rb":
        s3.delete_bucket(Bucket=args[0])
        return {}
    if op == "hb":
        s3.head_bucket(Bucket=args[0])
        return {}
    if op == "buckets":
        return {"buckets": [b["Name"] for b in s3.list_buckets()["Buckets"]]}
    if op == "put":
        bucket, key, path = args[:3]
        extra = {}
        for a in args[3:]:
            k, v = a.split("=", 1)
            if k == "content-type":
                extra["ContentType"] = v
            elif k == "md5":
                extra["ContentMD5"] = v
            elif k == "crc32c":
                # "auto": the right one, computed here (botocore's own CRC32C
                # needs the awscrt package).
                if v == "auto":
                    with open(path, "rb") as f:
                        v = base64.b64encode(struct.pack(">I", crc32c(f.read()))).decode()
                extra["ChecksumCRC32C"] = v
            elif k == "algo":
                extra["ChecksumAlgorithm"] = v
            elif k == "sha256":
                # A SHA-256 header: "wrong" sends another body's.
                extra["ChecksumSHA256"] = local_sums(b"other")["SHA256"]
            elif k == "tagging":
                extra["Tagging"] = v
            else:
                extra.setdefault("Metadata", {})[k] = v
        with open(path, "rb") as f:
            r = s3.put_object(Bucket=bucket, Key=key, Body=f, **extra)
        with open(path, "rb") as f:
            local = local_sums(f.read())
        return {"etag": r["ETag"].strip('"'), "sums": sums(r), "local": local}
    if op == "get":
        bucket, key, out = args[:3]
        kw = {"Bucket": bucket, "Key": key}
        for a in args[3:]:
            k, v = a.split("=", 1)
            kw[
                {
                    "range": "Range",
                    "if-none-match": "IfNoneMatch",
                    "if-match": "IfMatch",
                    "checksum-mode": "ChecksumMode",
                }[k]
            ] = v
        r = s3.get_object(**kw)
        with open(out, "wb") as f:
            for b in r["Body"].iter_chunks(1 << 20):
                f.write(b)
        return {
            "etag": r["ETag"].strip('"'),
            "length": r["ContentLength"],
            "content_type": r.get("ContentType"),
            "metadata": r.get("Metadata", {}),
            "sha256": sha256_file(out),
            "sums": sums(r),
            "tag_count": r.get("TagCount", 0),
        }
    if op == "head":
        r = s3.head_object(Bucket=args[0], Key=args[1])
        return {
            "etag": r["ETag"].strip('"'),
            "length": r["ContentLength"],
            "content_type": r.get("ContentType"),
            "metadata": r.get("Metadata", {}),
            "mtime": r["LastModified"].timestamp(),
        }
    if op == "rm":
        s3.delete_object(Bucket=args[0], Key=args[1])
        return {}
    if op == "rm-many":
        r = s3.delete_objects(
            Bucket=args[0], Delete={"Objects": [{"Key": k} for k in args[1:]]}
        )
        return {"deleted": sorted(d["Key"] for d in r.get("Deleted", []))}
    if op in ("list", "list-v1"):
        bucket = args[0]
        kw = {}
        for a in args[1:]:
            k, v = a.split("=", 1)
            kw[k.replace("-", "_")] = int(v) if k == "max-keys" else v
        return listing(s3, bucket, v1=(op == "list-v1"), **kw)
    if op == "copy":
        sb, sk, db, dk = args
        r = s3.copy_object(Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk})
        return {"etag": r["CopyObjectResult"]["ETag"].strip('"')}
    if op == "mpu-copy":
        # mpu-copy BUCKET KEY SRC_BUCKET SRC_KEY RANGE...: one UploadPartCopy
        # per RANGE ("bytes=FIRST-LAST", or "all"), then Complete.
        bucket, key, sb, sk = args[:4]
        up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        for n, rng in enumerate(args[4:], start=1):
            kw = {} if rng == "all" else {"CopySourceRange": rng}
            r = s3.upload_part_copy(
                Bucket=bucket, Key=key, UploadId=up, PartNumber=n,
                CopySource={"Bucket": sb, "Key": sk}, **kw
            )
            parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
        r = s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts}
        )
        return {
            "etag": r["ETag"].strip('"'),
            "parts": [p["ETag"].strip('"') for p in parts],
        }
    if op == "mpu":
        # mpu BUCKET KEY FILE PART_BYTES [ORDER]: ORDER "reverse" or
        # "missing" sends a bad part list to Complete.
        bucket, key, path, part = args[0], args[1], args[2], int(args[3])
        order = args[4] if len(args) > 4 else "ok"
        up = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        parts = []
        with open(path, "rb") as f:
            n = 1
            while True:
                b = f.read(part)
                if not b:
                    break
                r = s3.upload_part(
                    Bucket=bucket, Key=key, UploadId=up, PartNumber=n, Body=b
                )
                parts.append({"PartNumber": n, "ETag": r["ETag"]})
                n += 1
        listed = s3.list_parts(Bucket=bucket, Key=key, UploadId=up)["Parts"]
        assert [p["PartNumber"] for p in listed] == [p["PartNumber"] for p in parts]
        if order == "reverse":
            parts.reverse()
        elif order == "missing":
            parts.append({"PartNumber": len(parts) + 5, "ETag": parts[0]["ETag"]})
        try:
            r = s3.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts}
            )
        except ClientError:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up)
            raise
        return {"etag": r["ETag"].strip('"'), "parts": len(parts)}
    if op == "presign":
        # presign BUCKET KEY SECONDS: a presigned GET URL.
        url = s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": args[0], "Key": args[1]},
            ExpiresIn=int(args[2]),
        )
        return {"url": url}
    if op == "fetch":
        # fetch URL OUT: a plain HTTP GET (no SDK); S3's code on failure.
        import xml.etree.ElementTree as ET

        try:
            with urllib.request.urlopen(args[0]) as r, open(args[1], "wb") as f:
                f.write(r.read())
        except urllib.error.HTTPError as e:
            print("ERROR " + ET.fromstring(e.read()).findtext("Code"))
            sys.exit(3)
        return {"sha256": sha256_file(args[1])}
    if op == "tag":
        # tag BUCKET KEY [K=V...]: PutObjectTagging (no pairs: an empty set).
        tags = [dict(zip(("Key", "Value"), a.split("=", 1))) for a in args[2:]]
        s3.put_object_tagging(Bucket=args[0], Key=args[1], Tagging={"TagSet": tags})
        return {}
    if op == "tags":
        r = s3.get_object_tagging(Bucket=args[0], Key=args[1])
        return {"tags": {t["Key"]: t["Value"] for t in r["TagSet"]}}
    if op == "untag":
        s3.delete_object_tagging(Bucket=args[0], Key=args[1])
        return {}
    if op == "versioning":
        r = s3.get_bucket_versioning(Bucket=args[0])
        return {"status": r.get("Status")}
    if op == "versions":
        # versions BUCKET [max-keys=N] [prefix=P] [delimiter=D]: every page.
        kw = {"Bucket": args[0]}
        for a in args[1:]:
            k, v = a.split("=", 1)
            kw[{"max-keys": "MaxKeys", "prefix": "Prefix", "delimiter": "Delimiter"}[k]] = (
                int(v) if k == "max-keys" else v
            )
        versions, prefixes, pages = [], [], 0
        while True:
            r = s3.list_object_versions(**kw)
            pages += 1
            versions += [
                {"key": v["Key"], "id": v["VersionId"], "latest": v["IsLatest"], "etag": v["ETag"].strip('"')}
                for v in r.get("Versions", [])
            ]
            prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
            if not r.get("IsTruncated"):
                break
            kw["KeyMarker"] = r["NextKeyMarker"]
            kw["VersionIdMarker"] = r["NextVersionIdMarker"]
        return {"versions": versions, "prefixes": prefixes, "pages": pages}
    if op == "part-sum":
        # part-sum BUCKET KEY FILE ALGO [wrong]: one UploadPart with an
        # additional checksum; its answer, then the upload's parts; aborted.
        bucket, key, path, algo = args[:4]
        up = s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm=algo)["UploadId"]
        with open(path, "rb") as f:
            data = f.read()
        kw = {"ChecksumAlgorithm": algo}
        if args[4:] == ["wrong"]:
            kw = {"ChecksumSHA256": local_sums(b"other")["SHA256"]}
        try:
            r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=1, Body=data, **kw)
            return {"sums": sums(r), "local": local_sums(data)}
        except ClientError as e:
            parts = s3.list_parts(Bucket=bucket, Key=key, UploadId=up).get("Parts", [])
            print("ERROR " + e.response["Error"]["Code"] + (" +parts" if parts else ""))
            sys.exit(3)
        finally:
            s3.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=up)
    if op == "mpu-start":
        r = s3.create_multipart_upload(Bucket=args[0], Key=args[1])
        return {"upload": r["UploadId"]}
    if op == "mpu-part":
        # mpu-part BUCKET KEY UPLOAD N FILE: the file's bytes as part N.
        bucket, key, up, n, path = args
        with open(path, "rb") as f:
            data = f.read()
        r = s3.upload_part(Bucket=bucket, Key=key, UploadId=up, PartNumber=int(n), Body=data)
        return {"etag": r["ETag"].strip('"')}
    if op == "mpu-part-hang":
        # mpu-part-hang BUCKET KEY UPLOAD N FILE SENT: part N (presigned,
        # with the file's Content-Length) of which only the first SENT
        # bytes are sent; then it waits to be killed.
        bucket, key, up, n, path, sent = args
        with open(path, "rb") as f:
            data = f.read()
        url = s3.generate_presigned_url(
            "upload_part",
            Params={"Bucket": bucket, "Key": key, "UploadId": up, "PartNumber": int(n)},
            ExpiresIn=600,
        )
        u = urllib.parse.urlsplit(url)
        conn = http.client.HTTPConnection(u.hostname, u.port)
        conn.putrequest("PUT", u.path + "?" + u.query, skip_accept_encoding=True)
        conn.putheader("Content-Length", str(len(data)))
        conn.endheaders()
        conn.send(data[: int(sent)])
        print("sent", flush=True)
        time.sleep(3600)
        return {}
    if op == "mpu-parts":
        r = s3.list_parts(Bucket=args[0], Key=args[1], UploadId=args[2])
        return {"parts": [[p["PartNumber"], p["Size"], p["ETag"].strip('"')]
                          for p in r.get("Parts", [])]}
    if op == "mpu-done":
        # mpu-done BUCKET KEY UPLOAD N:ETAG,...: Complete with that list, as given.
        bucket, key, up, spec = args
        parts = [{"PartNumber": int(n), "ETag": e}
                 for n, e in (x.split(":") for x in spec.split(","))]
        r = s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=up, MultipartUpload={"Parts": parts}
        )
        return {"etag": r["ETag"].strip('"')}
    if op == "mpu-abort":
        s3.abort_multipart_upload(Bucket=args[0], Key=args[1], UploadId=args[2])
        return {}
    if op == "uploads":
        r = s3.list_multipart_uploads(Bucket=args[0])
        return {"uploads": [u["Key"] for u in r.get("Uploads", [])]}
    raise SystemExit(f"unknown operation {op}")


if __name__ == "__main__":
    try:
        print(json.dumps(main(sys.argv[1:])))
    except ClientError as e:
        print("ERROR " + e.response["Error"]["Code"])
        sys.exit(3)

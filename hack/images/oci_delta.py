#!/usr/bin/env python3
"""Stream an OCI image archive for `ctr images import -` that leaves out the blobs containerd already has.

Reads one image (by ref name) from an OCI layout directory written by `buildah push oci:DIR:REF`, and
writes to stdout a tar with oci-layout, an index.json naming only that image, and the blobs whose
digests are not listed in --have (the output of `ctr content ls -q`). containerd resolves the missing
ones from its content store, so a code-only change sends a few KB instead of gigabytes.
Also removes blobs of the layout that no manifest in its index.json references any more.

With --zstd-over N, each uncompressed layer larger than N bytes is sent zstd-compressed (level 1), under a
rewritten manifest: containerd keeps what it receives until the layer is unpacked, so a kind node that
drops layers after unpacking (hack/kind/cluster.sh) needs 3 GB of transient disk for the trainer's 6 GB
layer instead of 6. The compressed digest is computed in a first pass (zstd's output is deterministic for a
given level and thread count), then the layer is compressed again while it is sent: nothing is stored.
"""

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator

UNCOMPRESSED_LAYER = "application/vnd.oci.image.layer.v1.tar"
ZSTD_LAYER = "application/vnd.oci.image.layer.v1.tar+zstd"
ZSTD = ["zstd", "-1", "-T2", "-q", "-c"]


def blob_path(layout: str, digest: str) -> str:
    algo, hexd = digest.split(":", 1)
    return os.path.join(layout, "blobs", algo, hexd)


def referenced(layout: str, manifest_desc: dict) -> list[dict]:
    """Descriptors of the manifest, its config and its layers."""
    with open(blob_path(layout, manifest_desc["digest"])) as f:
        manifest = json.load(f)
    return [manifest_desc, manifest["config"], *manifest["layers"]]


def prune(layout: str, index: dict) -> None:
    keep = {d["digest"] for m in index["manifests"] for d in referenced(layout, m)}
    sha_dir = os.path.join(layout, "blobs", "sha256")
    for name in os.listdir(sha_dir):
        if "sha256:" + name not in keep:
            os.remove(os.path.join(sha_dir, name))


def zstd_chunks(path: str) -> Iterator[bytes]:
    proc = subprocess.Popen([*ZSTD, path], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    while chunk := proc.stdout.read(1 << 20):
        yield chunk
    if proc.wait() != 0:
        sys.exit(f"oci_delta: zstd failed on {path}")


def zstd_descriptor(path: str) -> dict:
    digest, size = hashlib.sha256(), 0
    for chunk in zstd_chunks(path):
        digest.update(chunk)
        size += len(chunk)
    return {"mediaType": ZSTD_LAYER, "digest": "sha256:" + digest.hexdigest(), "size": size}


class ChunkReader(io.RawIOBase):
    """A file object over zstd's output, for tarfile.addfile (which reads exactly the header's size)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buffer = chunks, b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while (n < 0 or len(self.buffer) < n) and (chunk := next(self.chunks, b"")):
            self.buffer += chunk
        data, self.buffer = (self.buffer, b"") if n < 0 else (self.buffer[:n], self.buffer[n:])
        return data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layout", required=True)
    p.add_argument("--ref", required=True, help="ref name in the layout, also the image name in containerd")
    p.add_argument("--have", required=True, help="file with one digest per line")
    p.add_argument("--stats", help="write a one-line summary here")
    p.add_argument("--zstd-over", type=int, help="send uncompressed layers larger than this zstd-compressed")
    a = p.parse_args()

    with open(os.path.join(a.layout, "index.json")) as f:
        index = json.load(f)
    # Keep only the newest manifest per ref (buildah appends; older ones would pin stale blobs).
    latest: dict[str, dict] = {}
    for m in index["manifests"]:
        latest[m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")] = m
    index["manifests"] = list(latest.values())
    with open(os.path.join(a.layout, "index.json"), "w") as f:
        json.dump(index, f)
    prune(a.layout, index)

    if a.ref not in latest:
        sys.exit(f"oci_delta: {a.ref} not in {a.layout}/index.json")
    manifest_desc = dict(latest[a.ref])
    manifest_desc["annotations"] = {
        "io.containerd.image.name": a.ref,
        "org.opencontainers.image.ref.name": a.ref.rsplit(":", 1)[-1],
    }
    with open(a.have) as f:
        have = {line.strip() for line in f if line.strip()}

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    descriptors = referenced(a.layout, latest[a.ref])
    compressed: dict[str, str] = {}  # compressed digest -> the uncompressed blob's path
    manifest_bytes = None
    if a.zstd_over is not None:
        with open(blob_path(a.layout, manifest_desc["digest"])) as f:
            manifest = json.load(f)
        for i, layer in enumerate(manifest["layers"]):
            if layer["mediaType"] == UNCOMPRESSED_LAYER and layer["size"] > a.zstd_over:
                path = blob_path(a.layout, layer["digest"])
                manifest["layers"][i] = zstd_descriptor(path)
                compressed[manifest["layers"][i]["digest"]] = path
        if compressed:
            manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
            manifest_desc["digest"] = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
            manifest_desc["size"] = len(manifest_bytes)
            descriptors = [manifest_desc, manifest["config"], *manifest["layers"]]

    sent = total = 0
    out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    with tarfile.open(fileobj=out, mode="w|") as tar:
        add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_bytes(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode())
        for desc in descriptors:
            total += desc["size"]
            # The manifest and config are tiny: always send them so the import is self-describing.
            is_manifest = desc is descriptors[0]
            if desc["digest"] in have and not is_manifest and desc["mediaType"].find("config") < 0:
                continue
            sent += desc["size"]
            name = "blobs/" + desc["digest"].replace(":", "/")
            if is_manifest and manifest_bytes is not None:
                add_bytes(tar, name, manifest_bytes)
            elif desc["digest"] in compressed:
                info = tarfile.TarInfo(name)
                info.size = desc["size"]
                tar.addfile(info, ChunkReader(zstd_chunks(compressed[desc["digest"]])))
            else:
                tar.add(blob_path(a.layout, desc["digest"]), arcname=name)
    out.flush()
    if a.stats:
        with open(a.stats, "w") as f:
            f.write(f"sent {sent / 1e6:.1f} MB of {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

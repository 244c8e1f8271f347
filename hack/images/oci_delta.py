#!/usr/bin/env python3
"""Stream an OCI image archive for `ctr images import -` that leaves out the blobs containerd already has.

Reads one image (by ref name) from an OCI layout directory written by `buildah push oci:DIR:REF`, and
writes to stdout a tar with oci-layout, an index.json naming only that image, and the blobs whose
digests are not listed in --have (the output of `ctr content ls -q`). containerd resolves the missing
ones from its content store, so a code-only change sends a few KB instead of gigabytes.
Also removes blobs of the layout that no manifest in its index.json references any more.
"""

import argparse
import io
import json
import os
import sys
import tarfile


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--layout", required=True)
    p.add_argument("--ref", required=True, help="ref name in the layout, also the image name in containerd")
    p.add_argument("--have", required=True, help="file with one digest per line")
    p.add_argument("--stats", help="write a one-line summary here")
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

    sent = total = 0
    out = os.fdopen(sys.stdout.fileno(), "wb", closefd=False)
    with tarfile.open(fileobj=out, mode="w|") as tar:
        add_bytes(tar, "oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add_bytes(tar, "index.json", json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode())
        for desc in referenced(a.layout, latest[a.ref]):
            total += desc["size"]
            # The manifest and config are tiny: always send them so the import is self-describing.
            if desc["digest"] in have and desc is not latest[a.ref] and desc["mediaType"].find("config") < 0:
                continue
            sent += desc["size"]
            path = blob_path(a.layout, desc["digest"])
            tar.add(path, arcname="blobs/" + desc["digest"].replace(":", "/"))
    out.flush()
    if a.stats:
        with open(a.stats, "w") as f:
            f.write(f"sent {sent / 1e6:.1f} MB of {total / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

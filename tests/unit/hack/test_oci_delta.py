"""hack/images/oci_delta.py, the stream `hack/cluster.sh images` and `hack/kind.sh load` feed to
`ctr images import`: only the blobs the node lacks, and with --zstd-over the big layers zstd-compressed
under a rewritten manifest that still names the uncompressed layers' diff IDs (containerd checks them)."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
OCI_DELTA = REPO / "hack" / "images" / "oci_delta.py"
REF = "localhost/example:dev"


def put_blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def layer_tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, list[bytes]]:
    root = tmp_path / "layout"
    (root / "blobs" / "sha256").mkdir(parents=True)
    # a small layer and a big one of incompressible-ish bytes (the big one gets compressed)
    layers = [
        layer_tar({"etc/small": b"x" * 100}),
        layer_tar({"big.bin": hashlib.sha256(b"s").digest() * 40_000}),
    ]
    layer_descs = [
        {"mediaType": "application/vnd.oci.image.layer.v1.tar", **put_blob(root, d)} for d in layers
    ]
    config = {"rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]}, "os": "linux"}
    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **put_blob(root, json.dumps(config).encode()),
    }
    manifest = {"schemaVersion": 2, "config": config_desc, "layers": layer_descs}
    manifest_desc = {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        **put_blob(root, json.dumps(manifest).encode()),
        "annotations": {"org.opencontainers.image.ref.name": REF},
    }
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}))
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return root, layers


def run_delta(tmp_path: Path, layout: Path, have: list[str], *extra: str) -> dict[str, bytes]:
    have_file = tmp_path / "have"
    have_file.write_text("".join(f"{d}\n" for d in have))
    out = subprocess.run(
        [
            sys.executable,
            str(OCI_DELTA),
            "--layout",
            str(layout),
            "--ref",
            REF,
            "--have",
            str(have_file),
            *extra,
        ],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def sent_manifest(files: dict[str, bytes]) -> dict:
    index = json.loads(files["index.json"])
    (desc,) = index["manifests"]
    data = files["blobs/" + desc["digest"].replace(":", "/")]
    assert hashlib.sha256(data).hexdigest() == desc["digest"].split(":")[1] and len(data) == desc["size"]
    return dict(json.loads(data))


def test_sends_only_the_blobs_the_node_lacks(tmp_path: Path, layout: tuple[Path, list[bytes]]) -> None:
    root, _ = layout
    everything = run_delta(tmp_path, root, [])
    manifest = sent_manifest(everything)
    assert all(f"blobs/{d['digest'].replace(':', '/')}" in everything for d in manifest["layers"])
    has_big = run_delta(tmp_path, root, [manifest["layers"][1]["digest"]])
    assert f"blobs/{manifest['layers'][1]['digest'].replace(':', '/')}" not in has_big
    assert f"blobs/{manifest['layers'][0]['digest'].replace(':', '/')}" in has_big
    # the manifest and config always travel, so the import describes the image by itself
    assert sent_manifest(has_big) == manifest


def test_big_layers_travel_zstd_compressed_and_decompress_to_the_same_layer(
    tmp_path: Path, layout: tuple[Path, list[bytes]]
) -> None:
    root, layers = layout
    files = run_delta(tmp_path, root, [], "--zstd-over", "100000")
    manifest = sent_manifest(files)
    small, big = manifest["layers"]
    assert small["mediaType"] == "application/vnd.oci.image.layer.v1.tar"
    assert big["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
    blob = files["blobs/" + big["digest"].replace(":", "/")]
    assert len(blob) == big["size"] and hashlib.sha256(blob).hexdigest() == big["digest"].split(":")[1]
    assert len(blob) < len(layers[1])
    plain = subprocess.run(["zstd", "-d", "-c"], input=blob, capture_output=True, check=True).stdout
    assert plain == layers[1]
    # the config (diff IDs of the uncompressed layers) is untouched
    config = json.loads(files["blobs/" + manifest["config"]["digest"].replace(":", "/")])
    assert config["rootfs"]["diff_ids"][1] == "sha256:" + hashlib.sha256(layers[1]).hexdigest()
    # deterministic: the same digest on a second run, so a node that has the blob is sent nothing again
    again = run_delta(tmp_path, root, [big["digest"]], "--zstd-over", "100000")
    assert sent_manifest(again)["layers"][1]["digest"] == big["digest"]
    assert "blobs/" + big["digest"].replace(":", "/") not in again

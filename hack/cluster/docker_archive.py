#!/usr/bin/env python3
"""Write a one-layer docker-archive tar (what `docker save` writes) from a few files.

Used for the pause image, which is a single static binary: `ctr images import` reads this format,
so no registry and no image builder are needed for it.
"""

import argparse
import hashlib
import io
import json
import tarfile


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--tag", required=True)
    p.add_argument("--entrypoint", required=True)
    p.add_argument("--file", action="append", default=[], help="SRC:PATH_IN_IMAGE:OCTAL_MODE")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
        for spec in a.file:
            src, dest, mode = spec.split(":")
            info = t.gettarinfo(src, arcname=dest)
            info.mode, info.uid, info.gid, info.uname, info.gname, info.mtime = int(mode, 8), 0, 0, "", "", 0
            with open(src, "rb") as f:
                t.addfile(info, f)
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [a.entrypoint]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "hack/cluster/docker_archive.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_name = diff_id.split(":")[1] + "/layer.tar"
    manifest = [{"Config": config_name, "RepoTags": [a.tag], "Layers": [layer_name]}]

    with tarfile.open(a.out, mode="w") as out:
        for name, data in (
            (layer_name, layer_bytes),
            (config_name, config_bytes),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))


if __name__ == "__main__":
    main()

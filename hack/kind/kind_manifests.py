#!/usr/bin/env python3
"""Write kind's default CNI (kindnetd) and storage (local-path) manifests, as `kind build node-image` puts
them in /kind/manifests, from kind's Go source in its module zip.

Usage: kind_manifests.py KIND_MODULE_DIR OUT_DIR

The manifests are Go string constants (pkg/build/nodeimage/const_*.go): raw strings joined with `+` to
other constants (the image names). This evaluates exactly that form and fails on anything else.
"""

import re
import sys
from pathlib import Path

SOURCES = {
    "default-cni.yaml": ("const_cni.go", "defaultCNIManifest"),
    "default-storage.yaml": ("const_storage.go", "defaultStorageManifest"),
}


def go_string_constant(source: str, name: str) -> str:
    simple = dict(re.findall(r'const (\w+) = "([^"]*)"', source))
    start = source.index(f"const {name} = ") + len(f"const {name} = ")
    text, i = "", start
    while True:
        while source[i] in " \t\n":
            i += 1
        if source[i] == "`":
            end = source.index("`", i + 1)
            text += source[i + 1 : end]
            i = end + 1
        else:
            word = re.match(r"\w+", source[i:])
            if word is None or word.group(0) not in simple:
                raise SystemExit(f"{name}: cannot evaluate the Go expression at {source[i : i + 40]!r}")
            text += simple[word.group(0)]
            i += word.end()
        j = i
        while source[j] in " \t":
            j += 1
        if source[j] != "+":
            return text
        i = j + 1


def main() -> None:
    module, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    for filename, (go_file, const) in SOURCES.items():
        text = go_string_constant((module / "pkg/build/nodeimage" / go_file).read_text(), const)
        (out / filename).write_text(text)
        images = sorted(set(re.findall(r"image: (\S+)", text)))
        print(f"{filename}: {len(text)} bytes, images {images}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes an OCI image layout of DEPTH tiny uncompressed layers into DIR,
tagged chainDEPTH: the same image `drivers bench` builds for its chain
workload (host/src/bench/inputs.rs): layer 0 holds shared/bottom/data
(4 KiB), every layer adds shared/layerNNN, so a lookup of the bottom file
visits every layer.

    chain-image.py DIR DEPTH
"""

import hashlib
import io
import json
import os
import sys
import tarfile


def layer(i):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:

        def add(name, data=None):
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            info.uid = info.gid = 0
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                t.addfile(info)
            else:
                info.mode = 0o644
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))

        add("shared/")
        if i == 0:
            add("shared/bottom/")
            add("shared/bottom/data", b"x" * 4096)
        add("shared/layer%03d" % i, b"%d\n" % i)
    return buf.getvalue()


def main():
    out, depth = sys.argv[1], int(sys.argv[2])
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)

    def put(data):
        h = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, h), "wb") as f:
            f.write(data)
        return "sha256:" + h, len(data)

    layers, diff_ids = [], []
    for i in range(depth):
        d, size = put(layer(i))
        diff_ids.append(d)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": size})
    config = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    cd, cs = put(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layers,
    }
    md, ms = put(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": md,
                "size": ms,
                "annotations": {"org.opencontainers.image.ref.name": "chain%d" % depth},
            }
        ],
    }
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')


if __name__ == "__main__":
    main()

"""`pdserve model-job`: a PersistentVolumeClaim and a Job that downloads a manifest's model
into it once, so that every replica mounts the weights instead of downloading them again.

The claim is ReadWriteMany: every pod of both pools, leaders and workers, on any node, mounts
it (read-only), and the Job writes it from yet another pod. ReadWriteOnce would put every
replica on the Job's node; ReadOnlyMany cannot be filled by a Job at all. The storage class
must offer RWX (NFS, CephFS, Filestore, EFS, Lustre...): `--storage-class` names it.

The Job resumes: `restartPolicy: OnFailure` restarts the container in place, and both tools
skip what is already on the volume (`hf download --local-dir` keeps its metadata beside the
files and fetches only what is missing or partial; `aws s3 sync` copies only what differs).

- `hf://<org>/<model>[:<revision>]` -> `hf download` (huggingface_hub, installed at start)
  into `<org>/<model>` on the claim;
- `s3://<bucket>/<prefix>` -> `aws s3 sync` into `<bucket>/<prefix>`.

`--secret NAME` adds that Secret's keys as environment (HF_TOKEN, or AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY...). The command prints the objects as YAML, headed by a comment with
the `pvc://<claim>/<path>` URI the manifest's `spec.model.uri` should then name.
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from typing import Any

import yaml

from pdserve.api.template import child_name
from pdserve.errors import UserError
from pdserve.render import names
from pdserve.render.workload import meta

MOUNT = "/data"
HF_IMAGE = "python:3.12-slim"
HF_PACKAGE = "huggingface_hub>=0.34,<2"  # 0.34 added the `hf` command
S3_IMAGE = "amazon/aws-cli:2.27.0"
BACKOFF_LIMIT = 10
SIZE = re.compile(r"^(?=.*[1-9])[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_PART = r"[A-Za-z0-9][A-Za-z0-9._-]*"
HF_URI = re.compile(rf"^hf://(?P<repo>{_PART}(/{_PART})?)(:(?P<revision>[A-Za-z0-9._/-]+))?/?$")
S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?P<key>/[^\s]*)?$")


def check_size(size: str) -> str:
    if not SIZE.match(size):
        raise UserError(f"--size {size!r}: expected a positive storage quantity such as 2Ti")
    return size


def plan(uri: str) -> tuple[str, str, list[str]]:
    """(path on the claim, image, shell script) that downloads `uri` resumably."""
    hf = HF_URI.match(uri)
    if hf:
        repo, revision = hf["repo"], hf["revision"]
        dest = f"{MOUNT}/{repo}"
        cmd = ["hf", "download", repo, "--local-dir", dest]
        if revision:
            cmd += ["--revision", revision]
        script = [
            f"pip install --no-cache-dir --quiet {shlex.quote(HF_PACKAGE)}",
            shlex.join(cmd),
        ]
        return repo, HF_IMAGE, script
    s3 = S3_URI.match(uri)
    if s3:
        path = s3["bucket"] + (s3["key"] or "").rstrip("/")
        script = [shlex.join(["aws", "s3", "sync", uri, f"{MOUNT}/{path}", "--no-progress"])]
        return path, S3_IMAGE, script
    scheme = uri.split("://", 1)[0] if "://" in uri else "a local path"
    if uri.startswith(("hf://", "s3://")):
        raise UserError(f"model uri {uri!r} is not a valid {scheme}:// URI")
    raise UserError(
        f"model uri {uri!r}: {scheme} cannot be downloaded by a Job (hf:// and s3:// can)"
    )


def objects(
    service: dict[str, Any],
    namespace: str,
    size: str,
    storage_class: str | None = None,
    pvc_name: str | None = None,
    secret: str | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """The claim and the Job, and the pvc:// URI of the model on the claim."""
    name = service["metadata"]["name"]
    uri = ((service["spec"].get("model") or {}).get("uri")) or ""
    path, image, script = plan(uri)
    claim = pvc_name or child_name(name, "-model")
    if not DNS_LABEL.match(claim):
        raise UserError(f"--pvc-name {claim!r}: not a valid name (lowercase DNS label)")
    check_size(size)
    labels = names.owner(name)
    pvc_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteMany"],
        "volumeMode": "Filesystem",
        "resources": {"requests": {"storage": size}},
    }
    if storage_class:
        pvc_spec["storageClassName"] = storage_class
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": meta(claim, namespace, dict(labels)),
        "spec": pvc_spec,
    }
    container: dict[str, Any] = {
        "name": "download",
        "image": image,
        "command": ["/bin/sh", "-c", "set -eu\n" + "\n".join(script) + "\n"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "volumeMounts": [{"name": "model", "mountPath": MOUNT}],
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"memory": "4Gi"},
        },
    }
    if secret:
        container["envFrom"] = [{"secretRef": {"name": secret}}]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(child_name(claim, "-download"), namespace, dict(labels)),
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "containers": [container],
                    "volumes": [{"name": "model", "persistentVolumeClaim": {"claimName": claim}}],
                },
            },
        },
    }
    return [pvc, job], f"pvc://{claim}/{path}"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="pdserve model-job")
    ap.add_argument("file")
    ap.add_argument("--size", required=True, help="the claim's size, e.g. 2Ti")
    ap.add_argument("--storage-class", help="a storage class offering ReadWriteMany")
    ap.add_argument("--pvc-name", help="the claim's name (default: <service>-model)")
    ap.add_argument("--secret", help="a Secret whose keys become the Job's environment")
    ap.add_argument("--config-dir", help="folder of LLMInferenceServiceConfig files")
    ap.add_argument("--namespace", "-n", help="namespace of the claim and the Job")
    args = ap.parse_args(argv[1:])
    from pdserve.api import ManifestError, dump, resolve_file

    try:
        check_size(args.size)
        services = resolve_file(args.file, args.config_dir, args.namespace)
        if len(services) != 1:
            raise UserError(f"{args.file}: expected one LLMInferenceService, found {len(services)}")
        svc = dump(services[0])
        ns = args.namespace or svc["metadata"].get("namespace") or "default"
        objs, uri = objects(svc, ns, args.size, args.storage_class, args.pvc_name, args.secret)
    except ManifestError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    except UserError as err:
        print(f"pdserve model-job: {err}", file=sys.stderr)
        return 2
    print(f"# when the Job has completed, set the manifest's spec.model.uri: {uri}")
    sys.stdout.write(yaml.safe_dump_all(objs, sort_keys=False))
    return 0

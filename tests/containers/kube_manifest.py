#!/usr/bin/env python3
"""Checks the Kubernetes manifests in a directory and prints what a pod of the example gets.

Usage: kube_manifest.py DIR OUT
Every *.yaml in DIR is parsed (yaml.safe_load_all); each document must be a mapping with
apiVersion, kind and metadata.name. For each workload (Deployment, StatefulSet, DaemonSet,
Job, Pod) that sets LD_PRELOAD to the shim, the memlock wiring is checked:
  - an initContainer mounts an emptyDir volume that the program's container mounts too, and
    LD_PRELOAD is MOUNT/lib/libmemlock_shim.so in that mount;
  - MEMLOCK_SHIM_CONFIG is a file of a configMap volume whose ConfigMap (in DIR) has that key;
  - the container adds the IPC_LOCK capability;
  - exec probes run a program from the shim's mount.
The ConfigMap's file is written to OUT/config/KEY, and shell assignments for the pod
(INIT_ARGS, INIT_MOUNT, SHIM_MOUNT, CONFIG_MOUNT, CAPS, ENV, PROBE) to OUT/pod.sh.
Exit status: 0 all good, 1 a check failed (each failure on stderr), 64 usage.
"""
import os
import shlex
import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}
SHIM = "lib/libmemlock_shim.so"
errors = []


def check(cond, message):
    if not cond:
        errors.append(message)
    return cond


def pod_spec(doc):
    if doc["kind"] == "Pod":
        return doc.get("spec") or {}
    return ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}


def mounts(container, volumes, kind):
    """{mountPath: volume} for the container's mounts of volumes of the given kind."""
    out = {}
    for m in container.get("volumeMounts") or []:
        v = volumes.get(m.get("name"))
        check(v is not None, f"{container.get('name')}: volumeMount of an undeclared volume {m.get('name')!r}")
        if v is not None and kind in v:
            out[m["mountPath"].rstrip("/")] = v
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 64
    src, out = sys.argv[1], sys.argv[2]
    docs = []
    names = sorted(f for f in os.listdir(src) if f.endswith((".yaml", ".yml")))
    check(names, f"{src}: no manifests")
    for name in names:
        with open(os.path.join(src, name)) as f:
            try:
                loaded = [d for d in yaml.safe_load_all(f) if d is not None]
            except yaml.YAMLError as e:
                check(False, f"{name}: {e}")
                continue
        for d in loaded:
            if check(isinstance(d, dict), f"{name}: a document is not a mapping"):
                ok = all(check(k in d, f"{name}: a document has no {k}") for k in ("apiVersion", "kind", "metadata"))
                if ok and check("name" in (d["metadata"] or {}), f"{name}: a {d['kind']} has no metadata.name"):
                    docs.append((name, d))
    configmaps = {d["metadata"]["name"]: d.get("data") or {} for _, d in docs if d["kind"] == "ConfigMap"}
    pods = []
    for name, d in docs:
        if d["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(d)
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for c in spec.get("containers") or []:
            env = {e["name"]: e.get("value") for e in c.get("env") or []}
            if SHIM not in (env.get("LD_PRELOAD") or ""):
                continue
            where = f"{name}: {d['kind']} {d['metadata']['name']}, container {c.get('name')}"
            shim_mount = os.path.dirname(os.path.dirname(env["LD_PRELOAD"]))
            empty = mounts(c, volumes, "emptyDir")
            check(shim_mount in empty, f"{where}: LD_PRELOAD {env['LD_PRELOAD']} is not in an emptyDir mount")
            init = [i for i in spec.get("initContainers") or []
                    if any(volumes.get(m.get("name")) is empty.get(shim_mount) for m in i.get("volumeMounts") or [])]
            init_mount = ""
            if check(len(init) == 1, f"{where}: no (or more than one) initContainer fills the shim's emptyDir"):
                init_mount = list(mounts(init[0], volumes, "emptyDir"))[0]
                check(init[0].get("args") == [init_mount],
                      f"{where}: the initContainer's args must be [its mount path {init_mount!r}]")
            config = env.get("MEMLOCK_SHIM_CONFIG") or ""
            cms = mounts(c, volumes, "configMap")
            config_mount, key = os.path.dirname(config), os.path.basename(config)
            if check(config_mount in cms, f"{where}: MEMLOCK_SHIM_CONFIG {config!r} is not in a configMap mount"):
                cm = cms[config_mount]["configMap"]["name"]
                if check(key in configmaps.get(cm, {}), f"{where}: ConfigMap {cm!r} has no key {key!r}"):
                    os.makedirs(os.path.join(out, "config"), exist_ok=True)
                    with open(os.path.join(out, "config", key), "w") as f:
                        f.write(configmaps[cm][key])
            caps = ((c.get("securityContext") or {}).get("capabilities") or {}).get("add") or []
            check("IPC_LOCK" in caps, f"{where}: securityContext.capabilities.add lacks IPC_LOCK")
            probe = []
            for p in ("livenessProbe", "readinessProbe", "startupProbe"):
                cmd = ((c.get(p) or {}).get("exec") or {}).get("command")
                if cmd:
                    check(cmd[0].startswith(shim_mount + "/"), f"{where}: {p} runs {cmd[0]}, not from {shim_mount}")
                    probe = cmd
            pods.append({"INIT_ARGS": " ".join(init[0].get("args") or []) if init else "",
                         "INIT_MOUNT": init_mount, "SHIM_MOUNT": shim_mount, "CONFIG_MOUNT": config_mount,
                         "CAPS": " ".join(caps), "ENV": " ".join(f"{k}={v}" for k, v in env.items()),
                         "PROBE": " ".join(probe)})
    check(pods, f"{src}: no workload sets LD_PRELOAD to the shim")
    for e in errors:
        print(f"kube_manifest: {e}", file=sys.stderr)
    if errors:
        return 1
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "pod.sh"), "w") as f:
        for k, v in pods[0].items():
            f.write(f"{k}={shlex.quote(v)}\n")
    print(f"kube_manifest: {len(docs)} document(s) in {len(names)} file(s), {len(pods)} shimmed container(s): ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The shipped KubeRay RayJob as written: its job file validates, and every file the job reads
is mounted where it is read (job.yaml by the driver on the head, the prompt file by the driver's
first look and by Ray Data's read tasks, which run on the pods that offer CPUs to tasks)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import yaml

from darkroom.jobs.jobfile import validate
from darkroom.platform.config import parse_yaml

MANIFEST = Path(__file__).parents[2] / "deploy" / "rayjob.yaml"


def pod_groups(ray_job: dict) -> dict[str, dict]:
    """Each pod group of the RayJob's cluster: its rayStartParams and its pod spec."""
    cluster = ray_job["spec"]["rayClusterSpec"]
    groups = {"head": cluster["headGroupSpec"]}
    groups.update({g["groupName"]: g for g in cluster["workerGroupSpecs"]})
    return groups


def mounted_files(group: dict, config_map: dict) -> set[PurePosixPath]:
    """The paths at which a group's containers see the ConfigMap's files."""
    pod = group["template"]["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    seen = set()
    for container in pod["containers"]:
        for mount in container.get("volumeMounts", []):
            source = volumes.get(mount["name"], {}).get("configMap", {})
            if source.get("name") != config_map["metadata"]["name"]:
                continue
            items = source.get("items") or [{"key": k, "path": k} for k in config_map["data"]]
            seen |= {PurePosixPath(mount["mountPath"]) / item["path"] for item in items}
    return seen


def runs_tasks(group: dict) -> bool:
    """Ray Data's read tasks need a CPU: a node started with num-cpus 0 runs none."""
    return str(group.get("rayStartParams", {}).get("num-cpus", "")) != "0"


def test_the_kuberay_job_validates_and_every_file_it_reads_is_mounted_where_it_is_read(
        tmp_path):
    config_map, ray_job = yaml.safe_load_all(MANIFEST.read_text())
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    entrypoint = ray_job["spec"]["entrypoint"].split()
    assert entrypoint[:4] == ["python", "-m", "darkroom", "run"]
    job_file = PurePosixPath(entrypoint[4])
    # as `darkroom submit` checks it: the bucket is the cluster's to reach
    spec = validate(parse_yaml(config_map["data"]["job.yaml"], "configmap")[0], base=tmp_path,
                    overrides=entrypoint[5:], reach=False)
    assert spec.output == "s3://my-bucket/darkroom"  # the workers write to the bucket

    prompt_file = PurePosixPath(spec.prompts.file)
    assert prompt_file.parent == PurePosixPath(tmp_path)  # named plainly, beside job.yaml
    prompt_file = job_file.parent / prompt_file.name  # where the pods see it
    groups = pod_groups(ray_job)
    assert not runs_tasks(groups["head"])  # the head runs the driver only
    assert {job_file, prompt_file} <= mounted_files(groups["head"], config_map)
    readers = [name for name, group in groups.items() if runs_tasks(group)]
    assert readers, "no pod group runs Ray Data's read tasks"
    for name in readers:
        assert prompt_file in mounted_files(groups[name], config_map), (
            f"the pods of `{name}` read {prompt_file} but do not mount it")

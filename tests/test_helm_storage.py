"""The Helm chart's object-storage values: S3 settings as plain env, S3 keys only as secrets.

Rendered with the real helm of scripts/get_helm.sh (the ``helm`` fixture of test_deploy, which
skips saying why when helm cannot be obtained)."""

from __future__ import annotations

import base64
from pathlib import Path

from test_deploy import container, helm, objects, render, render_error, setting_exists

__all__ = ["helm"]  # the fixture, imported so pytest finds it here

S3 = ["--set", "storage.url=s3://speech-audio/jobs",
      "--set", "storage.endpointUrl=http://minio.storage:9000",
      "--set", "storage.region=eu-central-1"]


def test_s3_storage_settings_reach_api_and_workers_and_keys_stay_in_the_secret(helm: Path) -> None:
    docs = render(helm, *S3, "--set", "secrets.s3AccessKeyId=AKIDEXAMPLE",
                  "--set", "secrets.s3SecretAccessKey=wJalrXUtnFEMI")
    deployments = objects(docs, "Deployment")
    workloads = [d for name, d in deployments.items() if not name.endswith("redis")]
    assert len(workloads) == 2, sorted(deployments)  # the API and the workers
    for workload in workloads:
        env = {e["name"]: e for e in container(workload)["env"]}
        assert env["VOXGATE_STORAGE__URL"]["value"] == "s3://speech-audio/jobs"
        assert env["VOXGATE_STORAGE__ENDPOINT_URL"]["value"] == "http://minio.storage:9000"
        assert env["VOXGATE_STORAGE__REGION"]["value"] == "eu-central-1"
        for name in ("VOXGATE_STORAGE__ACCESS_KEY_ID", "VOXGATE_STORAGE__SECRET_ACCESS_KEY",
                     "VOXGATE_STORAGE__SESSION_TOKEN"):
            assert setting_exists(name), name
            assert "value" not in env[name], f"{name} inlined as a plain value"
            assert env[name]["valueFrom"]["secretKeyRef"]["optional"] is True
    (secret,) = objects(docs, "Secret").values()
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert data["s3-access-key-id"] == "AKIDEXAMPLE"
    assert data["s3-secret-access-key"] == "wJalrXUtnFEMI"
    assert "s3-session-token" not in data  # not given: the optional ref stays unset


def test_without_object_storage_nothing_of_s3_is_rendered(helm: Path) -> None:
    docs = render(helm)
    for workload in objects(docs, "Deployment").values():
        names = {e["name"] for e in container(workload).get("env", [])}
        assert not {n for n in names if n.startswith("VOXGATE_STORAGE__")}, names


def test_s3_keys_as_plain_settings_fail_the_render(helm: Path) -> None:
    for name in ("VOXGATE_STORAGE__SECRET_ACCESS_KEY", "VOXGATE_STORAGE__ACCESS_KEY_ID",
                 "VOXGATE_STORAGE__SESSION_TOKEN"):
        error = render_error(helm, *S3, "--set", f"settings.{name}=x")
        assert "looks like a secret" in error and name in error, error

"""The Helm chart's optional Grafana dashboard ConfigMap (for the Grafana dashboard sidecar).

Rendered with the real helm of scripts/get_helm.sh (the ``helm`` fixture of test_deploy, which
skips saying why when helm cannot be obtained)."""

from __future__ import annotations

import json
from pathlib import Path

from test_deploy import CHART, _helm, helm, objects, render, render_error

__all__ = ["helm"]  # the fixture, imported so pytest finds it here

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / \
    "voxgate-dashboard.json"


def _dashboards(docs: list[dict]) -> dict[str, dict]:
    return {name: cm for name, cm in objects(docs, "ConfigMap").items()
            if "voxgate-dashboard.json" in cm.get("data", {})}


def test_dashboard_configmap_is_off_by_default(helm: Path) -> None:
    assert _dashboards(render(helm)) == {}


def test_enabled_dashboard_is_the_repos_json_with_the_sidecars_label(helm: Path) -> None:
    (cm,) = _dashboards(render(helm, "--set", "grafanaDashboard.enabled=true")).values()
    assert cm["metadata"]["name"] == "vg-voxgate-grafana-dashboard"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # a string, as labels must be
    assert cm["metadata"]["labels"]["app.kubernetes.io/instance"] == "vg"
    assert "namespace" not in cm["metadata"] and "annotations" not in cm["metadata"]
    # the chart ships the one dashboard: deploy/grafana's path is the chart's file
    assert DASHBOARD.resolve() == (CHART / "dashboards" / "voxgate-dashboard.json").resolve()
    shipped = json.loads(cm["data"]["voxgate-dashboard.json"])
    assert shipped == json.loads(DASHBOARD.read_text())
    assert shipped["panels"] and "{{route}}" in cm["data"]["voxgate-dashboard.json"]


def test_dashboard_label_namespace_and_folder_follow_the_values(helm: Path) -> None:
    docs = render(helm, "--set", "grafanaDashboard.enabled=true",
                  "--set", "grafanaDashboard.label=team_dashboards",
                  "--set", "grafanaDashboard.labelValue=speech",
                  "--set", "grafanaDashboard.namespace=monitoring",
                  "--set", "grafanaDashboard.annotations.grafana_folder=voxgate")
    (cm,) = _dashboards(docs).values()
    assert cm["metadata"]["labels"]["team_dashboards"] == "speech"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "voxgate"}


def test_dashboard_without_a_label_fails_the_render(helm: Path) -> None:
    error = render_error(helm, "--set", "grafanaDashboard.enabled=true",
                         "--set", "grafanaDashboard.label=")
    assert "grafanaDashboard.label is empty" in error


def test_chart_with_the_dashboard_lints_strict(helm: Path) -> None:
    run = _helm(helm, "lint", "--strict", str(CHART), "--set", "grafanaDashboard.enabled=true")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 chart(s) failed" in run.stdout

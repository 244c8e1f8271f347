"""Test harness for the local real Kubernetes cluster (hack/cluster.sh).

- `cluster.Cluster`: find, start or stop the cluster; its kubeconfig and node name.
- `kube.Kube`: the official `kubernetes` client, configured from the cluster's kubeconfig, plus waits.
- `disruptions`: what clouds do to pods and nodes (drain, NoExecute taint, preemption, a vanishing node,
  the kernel OOM killer), each producing the pod conditions a real cluster shows.
- `prometheus`: a local Prometheus (Debian's, installed by install_prometheus.sh) scraping given targets,
  with the shipped alert rules; `dashboard_svg` draws the dashboard's panels from its data.
- `grafana_schema`: Grafana's own dashboard schema check (grafana-schema-check/), built and cached.
- `plugin`: pytest fixtures `cluster`, `kube`, `namespace` (load with `from tests.harness.plugin import *`
  in a conftest.py, or `-p tests.harness.plugin`).
"""

from .cluster import Cluster, ClusterUnavailable
from .kube import Kube, wait_for

__all__ = ["Cluster", "ClusterUnavailable", "Kube", "wait_for"]

"""Test harness for the local real Kubernetes cluster (hack/cluster.sh).

- `cluster.Cluster`: find, start or stop the cluster; its kubeconfig and node name.
- `kube.Kube`: the official `kubernetes` client, configured from the cluster's kubeconfig, plus waits.
- `disruptions`: what clouds do to pods and nodes (drain, NoExecute taint, preemption, a vanishing node,
  the kernel OOM killer), each producing the pod conditions a real cluster shows.
- `plugin`: pytest fixtures `cluster`, `kube`, `namespace` (load with `from tests.harness.plugin import *`
  in a conftest.py, or `-p tests.harness.plugin`).
"""

from .cluster import Cluster, ClusterUnavailable
from .kube import Kube, wait_for

__all__ = ["Cluster", "ClusterUnavailable", "Kube", "wait_for"]

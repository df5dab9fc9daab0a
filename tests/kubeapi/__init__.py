"""A Kubernetes API test server and object builders for sniffer's control-plane tests.

Run standalone (for benchmarks, a separate process): `python -m tests.kubeapi --help`.
"""

from tests.kubeapi.server import KubeApiServer, shared_crd_dir

__all__ = ["KubeApiServer", "shared_crd_dir"]

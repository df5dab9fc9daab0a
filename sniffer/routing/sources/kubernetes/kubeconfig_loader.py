"""Load a kubeconfig with kubernetes-asyncio and print the credentials it yields as JSON.

Run as a short-lived child process (`python kubeconfig_loader.py PATH [CONTEXT]`) by
`credentials.py`: kubernetes-asyncio stays the one interpreter of kubeconfigs (contexts,
exec plugins, OIDC, files or inline data), while the long-running router never imports
`kubernetes_asyncio.client` and its ~40 MiB of generated models. It must stay runnable as
a plain script (no import of `sniffer`), write nothing but one JSON object to stdout, and
leave no credential on disk: kubernetes-asyncio materialises certificate data to files in
a private directory that is read back here and removed before the process exits.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def _read(path: object) -> str | None:
    if not path:
        return None
    return Path(str(path)).read_text()


async def load(path: str, context: str | None) -> dict[str, Any]:
    from kubernetes_asyncio import config
    from kubernetes_asyncio.client import Configuration

    cfg = Configuration()
    with tempfile.TemporaryDirectory(prefix="sniffer-kubeconfig-") as tmp:
        loader = await config.load_kube_config(
            config_file=path,
            context=context,
            client_configuration=cfg,
            persist_config=False,
            temp_file_path=tmp,
        )
        auth = await cfg.get_api_key_with_prefix("BearerToken")
        expiry = getattr(loader, "exec_plugin_expiry", None)
        return {
            "host": cfg.host,
            "ca_pem": _read(cfg.ssl_ca_cert),
            "cert_pem": _read(cfg.cert_file),
            "key_pem": _read(cfg.key_file),
            "authorization": auth or None,
            "verify": bool(cfg.verify_ssl),
            "server_name": getattr(cfg, "tls_server_name", None) or None,
            "proxy": cfg.proxy or None,
            "expires": expiry.timestamp() if expiry is not None else None,
        }


def main() -> None:
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: kubeconfig_loader.py KUBECONFIG [CONTEXT]")
    context = sys.argv[2] if len(sys.argv) == 3 else None
    try:
        out = asyncio.run(load(sys.argv[1], context))
    except Exception as exc:  # one line for the parent's error message, no traceback
        sys.exit(f"{type(exc).__name__}: {exc}")
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()

"""The proxy's voice: patch progress and results into the status of the object it serves.

A proxy Job works for one VMGuardBackup or VMGuardRestore and may only read that kind and patch
its status subresource (its ServiceAccount's Role allows nothing else). Progress is
throttled to one patch per ``interval`` seconds, so ``kubectl get vgb -w`` shows it
move without loading the apiserver; :meth:`StatusReporter.patch` (results, errors) is
sent at once. A failed progress patch is logged and dropped — the data path never
stops because the apiserver hiccupped — while a failed result patch raises, so the
Job fails and the operator sees it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from typing import Any

from kubernetes import client, config

from vmguard.api import GROUP, VERSION, format_time

log = logging.getLogger(__name__)


def kube_client() -> client.ApiClient:
    """In a pod: its service-account token; elsewhere (CLI, lab): ``$KUBECONFIG``."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def utc_now() -> str:
    return format_time(dt.datetime.now(dt.UTC))


class StatusReporter:
    """Reads and patches one custom object's status (``plural`` in ``namespace``)."""

    def __init__(
        self,
        plural: str,
        namespace: str,
        name: str,
        api_client: client.ApiClient | None = None,
        interval: float = 1.0,
    ) -> None:
        self.plural, self.namespace, self.name = plural, namespace, name
        self.custom = client.CustomObjectsApi(api_client or kube_client())
        self.interval = interval
        self._last = 0.0
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, self.name
        )
        return obj

    def patch(self, status: dict[str, Any]) -> None:
        """Merge ``status`` into the object's status now."""
        with self._lock:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, self.plural, self.name, {"status": status}
            )
            self._last = time.monotonic()

    def progress(self, bytes_done: int, bytes_total: int, bytes_per_second: float) -> None:
        """Throttled ``status.progress``; safe to call from several threads."""
        if time.monotonic() - self._last < self.interval and bytes_done < bytes_total:
            return
        percent = 100 if bytes_total <= 0 else min(100, int(bytes_done * 100 / bytes_total))
        body = {
            "progress": {
                "percent": percent,
                "bytesDone": bytes_done,
                "bytesTotal": bytes_total,
                "bytesPerSecond": int(bytes_per_second),
                "updateTime": utc_now(),
            }
        }
        try:
            self.patch(body)
        except client.ApiException as exc:
            log.warning("progress not reported (%s %s); carrying on", exc.status, exc.reason)

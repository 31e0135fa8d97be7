"""``vmguard status`` (also ``kubectl vmguard status``): which VMs are covered, from the
cluster's objects alone.

The command lists VCenter, VMProtectionPolicy, VMGuardBackup and ProtectedVM objects
(blocking, here; every LIST in pages); :mod:`.coverage` turns them into rows (a VM's last
good backup from its ProtectedVM, one record per VM, or a newer backup run), and this
module prints them: a ``kubectl get``-style table, one row per VM (vCenter, VM, policy
or ``UNPROTECTED``, last good backup and its age, RPO state, the newest verification's
result and age), then a summary line and
notes; or JSON or YAML (``-o``). The cluster is the one :mod:`.kube` selects
(``--context``, ``-n``).

The table is padded by *display* width (wcwidth), not by code points: a CJK character
or an emoji takes two terminal cells, a combining accent none, so ``len()`` would
misalign every column after such a name. Control characters in names are shown as
``?`` so that a name cannot move the cursor.
"""

from __future__ import annotations

import argparse
import datetime as dt
import unicodedata
from typing import TYPE_CHECKING, Any

from vmguard.api import GROUP, VERSION
from vmguard.api.kinds import BACKUP, POLICY, PROTECTEDVM, VCENTER
from vmguard.cli.kube import Cluster, add_cluster_options, connect
from vmguard.cli.options import UsageError, add_output_option, emit

if TYPE_CHECKING:
    # Imported where used: coverage brings the controller (the Kubernetes client,
    # pyVmomi) along, and every vmguard command registers this one's parser; a
    # ``disk backup`` must not pay ~0.2 s of start-up for them.
    from vmguard.cli.coverage import Coverage, VMRow


def printable(text: str) -> str:
    """``text`` with control characters (C0, C1, DEL) replaced by ``?``."""
    return "".join("?" if unicodedata.category(c) == "Cc" else c for c in text)


def display_width(text: str) -> int:
    """Terminal cells ``text`` takes (CJK and emoji 2, combining marks 0)."""
    from wcwidth import wcswidth  # ~50 ms to load: only for a table, not every command

    width = wcswidth(text)
    return width if width >= 0 else len(text)  # only for text printable() did not clean


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def columns(lines: list[list[str]], gap: str = "   ") -> list[str]:
    """Left-aligned columns, padded by display width; trailing blanks dropped."""
    widths = [max(display_width(line[i]) for line in lines) for i in range(len(lines[0]))]
    return [
        gap.join(pad(c, w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    ]


def span(delta: dt.timedelta | None) -> str:
    """``2d``, ``5h``, ``30m``, ``45s``: the largest whole unit."""
    if delta is None:
        return "-"
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def policy_cell(row: VMRow) -> str:
    if row.policy is None:
        return "UNPROTECTED"
    if row.policy_deleted:
        return f"{row.policy} (deleted)"
    return f"{row.policy} (default)" if row.by_default else row.policy


def render_table(coverage: Coverage, now: dt.datetime, wide: bool, namespaces: bool) -> str:
    """The rows, then the summary line, then notes."""
    from vmguard.api import format_time
    from vmguard.cli.coverage import summary_line

    head = ["VM", "VCENTER", "POLICY", "LAST-GOOD-BACKUP", "AGE", "RPO", "VERIFIED"]
    if wide:
        head += ["POWER", "FOLDER", "RPO-LIMIT", "INSTANCE-UUID", "MOREF", "BACKUP"]
        head += ["VERIFIED-BACKUP"]
    if namespaces:
        head.insert(0, "NAMESPACE")
    lines = [head]
    for r in coverage.rows:
        row = [
            printable(r.vm),
            r.vcenter or "-",
            policy_cell(r),
            format_time(r.last_backup) if r.last_backup else "-",
            span(now - r.last_backup) if r.last_backup else "-",
            r.rpo_state,
            f"{r.verification} ({span(now - r.verified)} ago)" if r.verified else "-",
        ]
        if wide:
            row += [
                r.power_state or "-",
                printable(r.folder) or "-",
                span(r.rpo),
                r.instance_uuid,
                r.moref or "-",
                r.last_backup_name or "-",
                r.verified_name or "-",
            ]
        if namespaces:
            row.insert(0, r.namespace)
        lines.append(row)
    text = columns(lines) if coverage.rows else ["No VMs found."]
    text.append(summary_line(coverage))
    text += [f"note: {n}" for n in coverage.notes]
    return "\n".join(text)


PAGE = 500
"""Objects per LIST request: a large estate is read in pages, never in one response."""


def read_objects(cluster: Cluster, namespace: str | None) -> dict[str, list[dict[str, Any]]]:
    """Blocking: the four kinds, from one namespace or (``None``) every namespace, each
    in pages of :data:`PAGE` (``limit``/``continue``)."""
    api = cluster.custom()
    out = {}
    for plural in (VCENTER.plural, POLICY.plural, BACKUP.plural, PROTECTEDVM.plural):
        items: list[dict[str, Any]] = []
        token = ""
        while True:

            def listing(p: str = plural, cont: str = token) -> Any:
                page: dict[str, Any] = {"limit": PAGE}
                if cont:
                    page["_continue"] = cont
                if namespace is None:
                    return api.list_cluster_custom_object(GROUP, VERSION, p, **page)
                return api.list_namespaced_custom_object(GROUP, VERSION, namespace, p, **page)

            res = cluster.call(f"listing {plural}", listing)
            items += list(res.get("items", []))
            token = str((res.get("metadata") or {}).get("continue") or "")
            if not token:
                break
        out[plural] = items
    return out


def _run(args: argparse.Namespace) -> int:
    from vmguard.cli.coverage import build_coverage, point_records

    if args.all_namespaces and getattr(args, "kube_namespace", None):
        raise UsageError("give -n NAMESPACE or -A, not both")
    cluster = connect(args)
    namespace = None if args.all_namespaces else cluster.namespace
    found = read_objects(cluster, namespace)
    now = dt.datetime.now(dt.UTC)
    records = found[BACKUP.plural] + point_records(found[PROTECTEDVM.plural])
    coverage = build_coverage(found[VCENTER.plural], found[POLICY.plural], records, now)
    text = "" if args.output in ("json", "yaml") else None
    if text is None:
        text = render_table(coverage, now, args.output == "wide", args.all_namespaces)
    emit(args, coverage.doc(), text)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="coverage: every VM, its policy, last good backup and RPO state"
    )
    add_cluster_options(p)
    p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    add_output_option(p, ("table", "wide", "json", "yaml"))
    p.set_defaults(func=_run, parser=p)

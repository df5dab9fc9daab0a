"""Limits from Kubernetes annotations: a tenant's on its Namespace, a backend's on its Service.

    sniffer.dev/max-connections: "300"          Namespace (tenant) or Service (backend)
    sniffer.dev/connections-per-second: "50"    token-bucket rate (may be fractional)
    sniffer.dev/connections-burst: "100"        token-bucket size
    sniffer.dev/max-pending-dials: "64"         Service only: dials in flight

A malformed value (not a number, negative, or an annotation that does not apply to the
object) is reported as a problem and ignored; the other annotations of the object still
apply. `limits_from_annotations` is a pure function of the annotations; the source calls
`report_limit_problems` to log and count the problems it has not reported before.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from sniffer.observe import metrics
from sniffer.routing.table import NO_LIMITS, Limits

log = logging.getLogger("sniffer.kubernetes")

PREFIX = "sniffer.dev/"
ANNOTATIONS = {
    "sniffer.dev/max-connections": "max_connections",
    "sniffer.dev/connections-per-second": "connections_per_second",
    "sniffer.dev/connections-burst": "burst",
    "sniffer.dev/max-pending-dials": "max_pending_dials",
}
"""Annotation -> `Limits` field."""
NAMESPACE_ONLY_NOT = {"sniffer.dev/max-pending-dials"}
"""Annotations that make no sense on a Namespace (pending dials are per backend)."""
PROBLEM_MARK = "bad limit annotation"
"""Every problem this module reports contains it (the source counts those)."""
_MAX = 10_000_000


def limit_annotations(pairs: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The limit annotations among (key, value) pairs, sorted (what records keep)."""
    return tuple(sorted((k, v) for k, v in pairs if k in ANNOTATIONS))


def limits_from_annotations(
    pairs: Iterable[tuple[str, str]], scope: str, where: str
) -> tuple[Limits, list[str]]:
    """`Limits` from the `sniffer.dev/` annotations of a Namespace (`scope="tenant"`) or a
    Service (`scope="backend"`) named by `where` ("Namespace team-a"), and the problems."""
    got: dict[str, float] = {}
    problems: list[str] = []
    for key, raw in pairs:
        field = ANNOTATIONS.get(key)
        if field is None:
            continue
        if scope == "tenant" and key in NAMESPACE_ONLY_NOT:
            problems.append(f"{where}: {PROBLEM_MARK} {key}: applies to Services only; ignored")
            continue
        value = _number(raw.strip(), fractional=field == "connections_per_second")
        low = 0 if field == "max_connections" else 1
        if value is None or not low <= value <= _MAX:
            what = "a number" if field == "connections_per_second" else "a whole number"
            problems.append(
                f"{where}: {PROBLEM_MARK} {key}={raw!r}: expected {what} from {low} to "
                f"{_MAX}; ignored"
            )
            continue
        got[field] = value
    if not got:
        return NO_LIMITS, problems
    return Limits(**got, source=f"{where} annotations"), problems  # type: ignore[arg-type]


def report_limit_problems(new: Sequence[str], old: Sequence[str]) -> None:
    """Log and count the limit-annotation problems of a translation that the previous
    translation of the namespace did not have (a rebuild must not repeat them)."""
    for problem in new:
        if PROBLEM_MARK in problem and problem not in old:
            log.warning("%s", problem)
            kind = problem.split(" ", 1)[0]
            metrics.ANNOTATION_ERRORS.labels(
                kind if kind in ("Namespace", "Service") else "other"
            ).inc()


def _number(text: str, fractional: bool) -> float | None:
    if text.isdigit():
        return int(text)
    if fractional:
        try:
            value = float(text)
        except ValueError:
            return None
        return value if value == value and value not in (float("inf"), float("-inf")) else None
    return None

"""A sweep folder read as rows: one per job folder (status, overrides, metrics), sorted, grouped by seed.

Only the standard library and PyYAML (to read the ``.hydra/*.yaml`` files Hydra writes in every
job folder); stn/sweep.py writes the summary files from these rows. The jobs' ``metrics.json``
are written by :func:`stn.logs.write_metrics`.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml

METRIC_ORDER = (
    "val/acc_best",
    "val/acc",
    "test/acc",
    "val/iou",
    "val/iou50",
    "test/iou",
    "test/iou50",
    "val/loss",
    "test/loss",
    "train/loss",
    "train/acc",
)
WALL_TIME = "time/wall_s"
# Overrides that tell repeats of the same configuration apart.
SEED_KEYS = ("seed",)
# A job's ``status`` in metrics.json (see stn.tasks.run_task); jobs are listed in this order.
STATUSES = ("ok", "pruned", "incomplete", "interrupted", "diverged", "failed")
STATUS_ORDER = {name: i for i, name in enumerate(STATUSES)}


# -- reading a sweep folder ------------------------------------------------------------------------
def is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def parse_overrides(items: Iterable[str]) -> Dict[str, str]:
    """``["model=cnn", "+x=1", "~y"]`` -> ``{"model": "cnn", "+x": "1", "~y": ""}`` (the key as written)."""
    out: Dict[str, str] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        out[key.strip()] = value.strip() if sep else ""
    return out


def _job_sort_key(path: Path) -> Tuple[int, Any]:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def job_dirs(sweep_dir: Path) -> List[Path]:
    """The job folders of a sweep: direct subfolders with ``.hydra/overrides.yaml`` or ``metrics.json``."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return []
    found = [
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and ((p / ".hydra" / "overrides.yaml").is_file() or (p / "metrics.json").is_file())
    ]
    return sorted(found, key=_job_sort_key)


def read_job(path: Path) -> Dict[str, Any]:
    """One job folder as a row: job, status, overrides, metrics, error, optimized_metric, direction.

    status: ``metrics.json``'s ``status`` (``ok`` when it has none: written by ``train()`` called
    directly), or ``incomplete`` when there is no ``metrics.json`` yet (still running, or killed).
    """
    path = Path(path)
    row: Dict[str, Any] = {"job": path.name, "path": str(path), "overrides": {}, "metrics": {}, "error": ""}
    row["overrides"] = parse_overrides(load_yaml(path / ".hydra" / "overrides.yaml") or [])
    config = load_yaml(path / ".hydra" / "config.yaml") or {}
    row["optimized_metric"] = config.get("optimized_metric") if isinstance(config, dict) else None
    hydra_cfg = load_yaml(path / ".hydra" / "hydra.yaml")
    sweeper = ((hydra_cfg or {}).get("hydra") or {}).get("sweeper") if isinstance(hydra_cfg, dict) else None
    direction = sweeper.get("direction") if isinstance(sweeper, dict) else None
    if isinstance(direction, (list, tuple)):
        direction = direction[0] if direction else None
    row["direction"] = direction if direction in ("maximize", "minimize") else None
    metrics_path = path / "metrics.json"
    if not metrics_path.is_file():
        row["status"] = "incomplete"
        return row
    try:
        saved = json.loads(metrics_path.read_text())
    except (OSError, ValueError) as err:
        row["status"], row["error"] = "failed", f"unreadable metrics.json: {err}"
        return row
    row["status"] = str(saved.pop("status", "ok"))
    row["error"] = str(saved.pop("error", "") or "")
    row["metrics"] = {
        k: (float(v) if is_finite(v) else None) for k, v in saved.items() if v is None or is_finite(v)
    }
    return row


def _most_common(values: Iterable[Any]) -> Any:
    counts = Counter(v for v in values if v)
    return counts.most_common(1)[0][0] if counts else None


def sweep_objective(rows: Sequence[Mapping[str, Any]]) -> Tuple[Optional[str], str]:
    """The sweep's optimized metric (``optimized_metric`` of its jobs' configs) and its direction.

    The direction is the Optuna sweeper's ``direction`` when the jobs ran under it; otherwise
    ``minimize`` for names with ``loss`` or ``err`` in them and ``maximize`` for the rest. Without an
    ``optimized_metric`` (eval.py), the first of ``val/acc_best`` and ``test/acc`` that jobs report.
    """
    metric = _most_common(r.get("optimized_metric") for r in rows)
    if metric is None:
        present = {k for r in rows for k in r.get("metrics", {})}
        metric = next((m for m in ("val/acc_best", "test/acc") if m in present), None)
    direction = _most_common(r.get("direction") for r in rows)
    if direction is None:
        direction = "minimize" if metric and ("loss" in metric or "err" in metric) else "maximize"
    return metric, direction


def sort_rows(rows: Sequence[Dict[str, Any]], metric: Optional[str], direction: str) -> List[Dict[str, Any]]:
    """Best first by ``metric``; ok jobs without the metric next, then the others in STATUSES order."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: Mapping[str, Any]):
        value = row.get("metrics", {}).get(metric) if metric else None
        has = row.get("status") == "ok" and is_finite(value)
        return (
            STATUS_ORDER.get(row.get("status"), 3),
            0 if has else 1,
            sign * value if has else 0.0,
            _job_sort_key(Path(row["job"])),
        )

    return sorted(rows, key=key)


def metric_columns(rows: Sequence[Mapping[str, Any]], first: Optional[str] = None) -> List[str]:
    """Metric names found in the rows: ``first``, those of METRIC_ORDER, the others sorted, wall time last."""
    present = {k for r in rows for k in r.get("metrics", {})}
    ordered = [m for m in (first, *METRIC_ORDER) if m and m in present]
    ordered += sorted(present - set(ordered) - {WALL_TIME})
    ordered = list(dict.fromkeys(ordered))
    return ordered + ([WALL_TIME] if WALL_TIME in present and WALL_TIME not in ordered else [])


def override_columns(rows: Sequence[Mapping[str, Any]]) -> Tuple[List[str], Dict[str, str]]:
    """All override keys (in order of first appearance), and those with one value in every job."""
    keys = list(dict.fromkeys(k for r in rows for k in r.get("overrides", {})))
    common = {}
    for k in keys:
        values = {r.get("overrides", {}).get(k) for r in rows}
        if len(values) == 1 and None not in values:
            common[k] = values.pop()
    return keys, common


# -- grouping repeats that differ only by seed -----------------------------------------------------
def group_by_seed(
    rows: Sequence[Mapping[str, Any]], metrics: Sequence[str], seed_keys: Sequence[str] = SEED_KEYS
) -> List[Dict[str, Any]]:
    """Rows with the same overrides except ``seed``, grouped: mean, std, median and count per metric.

    Returns one dict per group (in order of first appearance) with ``overrides`` (without the seed),
    ``jobs``, ``seeds``, ``n`` (ok jobs), ``n_failed`` (failed, diverged or interrupted) and
    ``stats[metric] = {"mean", "std", "median", "n"}`` over the ok jobs that report a finite value.
    ``std`` is the sample standard deviation (n - 1 in the denominator; None for fewer than two).
    """
    groups: Dict[Tuple[Tuple[str, str], ...], Dict[str, Any]] = {}
    for row in rows:
        overrides = row.get("overrides", {})
        key = tuple((k, v) for k, v in overrides.items() if k not in seed_keys)
        group = groups.setdefault(
            key,
            {
                "overrides": dict(key),
                "jobs": [],
                "seeds": [],
                "n": 0,
                "n_failed": 0,
                "_values": {m: [] for m in metrics},
            },
        )
        group["jobs"].append(row.get("job"))
        seed = next((overrides[k] for k in seed_keys if k in overrides), None)
        if seed is not None:
            group["seeds"].append(seed)
        if row.get("status") == "ok":
            group["n"] += 1
            for m in metrics:
                value = row.get("metrics", {}).get(m)
                if is_finite(value):
                    group["_values"][m].append(float(value))
        elif row.get("status") not in ("incomplete", "pruned"):  # failed, diverged or interrupted
            group["n_failed"] += 1
    out = []
    for group in groups.values():
        values = group.pop("_values")
        group["stats"] = {
            m: {
                "mean": statistics.fmean(v) if v else None,
                "std": statistics.stdev(v) if len(v) > 1 else None,
                "median": statistics.median(v) if v else None,
                "n": len(v),
            }
            for m, v in values.items()
        }
        out.append(group)
    return out


def has_seed_repeats(rows: Sequence[Mapping[str, Any]], seed_keys: Sequence[str] = SEED_KEYS) -> bool:
    """True when some jobs differ only by their seed override."""
    seen = Counter(
        tuple((k, v) for k, v in r.get("overrides", {}).items() if k not in seed_keys)
        for r in rows
        if any(k in r.get("overrides", {}) for k in seed_keys)
    )
    return any(n > 1 for n in seen.values())


def summarize(sweep_dir: Path) -> Dict[str, Any]:
    """Read a sweep folder: rows (sorted), metric and direction, columns and seed groups."""
    sweep_dir = Path(sweep_dir)
    rows = [read_job(p) for p in job_dirs(sweep_dir)]
    metric, direction = sweep_objective(rows)
    rows = sort_rows(rows, metric, direction)
    metrics = metric_columns(rows, metric)
    keys, common = override_columns(rows)
    groups = None
    if has_seed_repeats(rows):
        groups = group_by_seed(rows, metrics)
        sign = -1.0 if direction == "maximize" else 1.0

        def gkey(g):
            mean = g["stats"].get(metric, {}).get("mean") if metric else None
            return (0, sign * mean) if mean is not None else (1, 0.0)

        groups = sorted(groups, key=gkey)
    return {
        "sweep_dir": sweep_dir,
        "rows": rows,
        "metric": metric,
        "direction": direction,
        "metrics": metrics,
        "override_keys": keys,
        "common": common,
        "groups": groups,
    }

"""Sweeps: failure-tolerant jobs, a results summary per sweep folder, and HParams for TensorBoard.

- ``run_task`` (stn/tasks.py) asks :func:`in_multirun`; in a multirun a job that raises is
  recorded by :func:`record_failure` (``metrics.json`` with ``"status": "failed"`` and the error,
  the traceback in the job's log) and the sweep goes on.
- :func:`write_summary` reads every job folder of a sweep (``.hydra/overrides.yaml``,
  ``.hydra/config.yaml``, ``metrics.json``) and writes ``summary.csv`` and ``summary.md`` (one row
  per job, best first, failed jobs last) and, when jobs differ only by ``seed``,
  ``summary_grouped.csv`` (mean, std, median and count across seeds, also a table in
  ``summary.md``). :class:`SweepSummary` (a Hydra callback, configs/hydra/default.yaml) runs it
  after every job and at the end of a multirun; ``python -m stn.sweep <sweep folder>`` runs it by
  hand.
- :func:`log_hparams_with_metrics`: TensorBoard's HParams tab shows the runs of a sweep side by
  side with their final metrics.

Only the standard library, PyYAML and Hydra's callback base at import time: ``python -m stn.sweep``
starts in a fraction of a second.
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import json
import logging
import math
import os
import statistics
import sys
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

# Metric columns, in this order, then any others alphabetically (summary.csv has them all).
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
# Metrics shown in summary.md (the optimized metric comes first in any case).
MD_METRICS = ("val/acc_best", "val/acc", "test/acc", "val/iou50", "test/iou50")
WALL = "time/wall_s"
# Overrides that tell repeats of the same configuration apart.
SEED_KEYS = ("seed",)
STATUS_ORDER = {"ok": 0, "incomplete": 1, "failed": 2}
# Final metrics that no Lightning logger has written (stn.tasks.train measures them itself).
OWN_SCALARS = ("time/",)


# -- failure handling (called by stn.tasks.run_task) ---------------------------------------------
def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``, ``hparams_search=...``).

    False when Hydra is not initialized (``stn.tasks.train`` called directly, as in tests).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return False
    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # a partial hydra config
        return False


def error_text(err: BaseException) -> str:
    """``"<type>: <message>"`` of an exception."""
    message = str(err).strip()
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def record_failure(cfg: DictConfig, err: BaseException, wall_s: float) -> None:
    """Record a failed multirun job and free what it held, so that the next job can run.

    Logs the traceback (Hydra writes the log to the job's folder, ``<task_name>.log``), writes
    ``metrics.json`` with ``"status": "failed"``, ``"error": "<type>: <message>"`` and
    ``time/wall_s``, releases cached GPU memory. Returns None: the value a failed job hands to
    the sweeper (see :func:`sweeper_value`).
    """
    text = error_text(err)
    log.error("Job failed, the sweep goes on: %s", text, exc_info=(type(err), err, err.__traceback__))
    if _is_rank_zero():
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {"status": "failed", "error": text, WALL: wall_s}
        (out / "metrics.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    # the traceback's frames hold the trainer, model and batches: let them go
    traceback.clear_frames(err.__traceback__)
    err.__traceback__ = None
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return None


def sweeper_value(value: Any) -> Optional[float]:
    """What a job returns to the sweeper: the optimized metric, or None when it is not a finite number.

    In a multirun a missing or NaN metric becomes None. hydra-optuna-sweeper 1.3.0 with optuna
    2.10 aborts the whole study when a job returns NaN (optuna rejects NaN in ``study.tell``, and
    the sweeper's retry with ``state=FAIL`` still passes the NaN: hydra issue #2237, fixed upstream
    by PR #3451 but not released); a value that is not float-castable is recorded as a FAIL trial
    and the study goes on. Hydra's basic (grid) sweeper ignores return values. Outside a multirun
    the value is returned as is (NaN when missing).
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if in_multirun() and not math.isfinite(number):
        return None
    return number


# -- TensorBoard HParams ---------------------------------------------------------------------------
def _hparam_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return "None" if v is None else str(v)


def log_hparams_with_metrics(trainer: Any, cfg: DictConfig, metrics: Mapping[str, Any]) -> None:
    """Show this run in TensorBoard's HParams tab: its hyperparameters beside its final metrics.

    For every TensorBoard logger of ``trainer`` (rank zero only), writes the hparams plugin's
    session start info (``stn.tasks.hyperparameters(cfg)``: flat ``section/key`` values) and
    session end info (status success). The tab reads each metric's value as the last point of the
    scalar of the same name: Lightning logged ``train/*``, ``val/*``, ``test/*`` (every epoch end)
    and ``lr-*``, so their last points are the final metrics; the metrics ``train()`` adds itself
    (``time/wall_s``) get one scalar point here, at the last global step.

    No ``experiment`` summary is written on purpose: TensorBoard takes the experiment (the list of
    hparams and metrics) from the first run that has one and ignores the others, so one run's
    keys would hide those of runs that differ (e.g. ``model=attention`` beside ``model=cnn``);
    without it, TensorBoard builds the experiment from all runs' session infos and scalar tags.
    Call it after ``trainer.test`` (the logger may be finalized: its writer reopens a new event
    file in the same folder, closed again here).
    """
    from lightning.pytorch.loggers import TensorBoardLogger
    from lightning.pytorch.utilities import rank_zero_only
    from torch.utils.tensorboard.summary import hparams

    from stn.tasks import hyperparameters

    if getattr(rank_zero_only, "rank", 0) != 0:
        return
    loggers = [lg for lg in getattr(trainer, "loggers", []) if isinstance(lg, TensorBoardLogger)]
    if not loggers:
        return
    params = {k: _hparam_value(v) for k, v in hyperparameters(cfg).items()}
    final = {k: float(v) for k, v in metrics.items() if _finite(v)}
    extra = {k: v for k, v in final.items() if k.startswith(OWN_SCALARS)}
    _, start_info, end_info = hparams(params, final)
    step = int(getattr(trainer, "global_step", 0))
    for logger in loggers:
        writer = logger.experiment
        for tag, value in extra.items():
            writer.add_scalar(tag, value, step)
        file_writer = writer._get_file_writer()  # reopened if Lightning closed it (as Lightning does)
        file_writer.add_summary(start_info)
        file_writer.add_summary(end_info)
        writer.flush()
        writer.close()


# -- reading a sweep folder ------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _load_yaml(path: Path) -> Any:
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
    row["overrides"] = parse_overrides(_load_yaml(path / ".hydra" / "overrides.yaml") or [])
    config = _load_yaml(path / ".hydra" / "config.yaml") or {}
    row["optimized_metric"] = config.get("optimized_metric") if isinstance(config, dict) else None
    hydra_cfg = _load_yaml(path / ".hydra" / "hydra.yaml")
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
        k: (float(v) if _finite(v) else None) for k, v in saved.items() if v is None or _finite(v)
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
    """Best first by ``metric``; ok jobs without the metric next, then incomplete, then failed jobs."""
    sign = -1.0 if direction == "maximize" else 1.0

    def key(row: Mapping[str, Any]):
        value = row.get("metrics", {}).get(metric) if metric else None
        has = row.get("status") == "ok" and _finite(value)
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
    ordered += sorted(present - set(ordered) - {WALL})
    ordered = list(dict.fromkeys(ordered))
    return ordered + ([WALL] if WALL in present and WALL not in ordered else [])


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
    ``jobs``, ``seeds``, ``n`` (ok jobs), ``n_failed`` and ``stats[metric] = {"mean", "std",
    "median", "n"}`` over the ok jobs that report a finite value. ``std`` is the sample standard
    deviation (n - 1 in the denominator; None for fewer than two values).
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
                if _finite(value):
                    group["_values"][m].append(float(value))
        elif row.get("status") == "failed":
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


# -- writing ---------------------------------------------------------------------------------------
def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def _md_number(v: Optional[float], name: str = "") -> str:
    if v is None or not _finite(v):
        return "-"
    return f"{v:.1f}" if name == WALL else f"{v:.4f}"


def _md_value(text: str) -> str:
    """An override value for the markdown table: long floats (Optuna's samples) to 4 significant digits."""
    try:
        number = float(text)
    except (TypeError, ValueError):
        return text
    return f"{number:.4g}" if "." in text and len(text) > 8 and math.isfinite(number) else text


def _md_cell(text: Any, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c, 400) for c in row) + " |" for row in body]
    return lines


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and a rename.

    Parallel jobs refreshing the summary never leave half a file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv_text(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_csv_value(c) for c in row] for row in body])
    return buf.getvalue()


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


def render_markdown(s: Mapping[str, Any]) -> str:
    rows, metric, metrics = s["rows"], s["metric"], s["metrics"]
    counts = Counter(r["status"] for r in rows)
    varying = [k for k in s["override_keys"] if k not in s["common"]]
    shown = [m for m in dict.fromkeys([metric, *MD_METRICS]) if m and m in metrics]
    lines = [f"# Sweep summary: {Path(s['sweep_dir']).name}", ""]
    state = ", ".join(f"{counts[k]} {k}" for k in ("ok", "failed", "incomplete") if counts.get(k))
    order = (
        f"Sorted by `{metric}` ({s['direction']}), failed jobs last." if metric else "No metric to sort by."
    )
    lines.append(f"{len(rows)} jobs ({state or 'none'}). {order}")
    if s["common"]:
        lines += ["", "Same in every job: " + ", ".join(f"`{k}={v}`" for k, v in s["common"].items())]
    best = _load_yaml(Path(s["sweep_dir"]) / "optimization_results.yaml")
    if isinstance(best, dict) and "best_value" in best:
        lines += [
            "",
            f"Optuna best value {best['best_value']}, params: "
            + ", ".join(f"`{k}={v}`" for k, v in (best.get("best_params") or {}).items()),
        ]
    lines.append("")
    header = ["#", "job", "status", *varying, *shown, "wall s", "error"]
    body = []
    for i, r in enumerate(rows, 1):
        body.append(
            [
                str(i),
                r["job"],
                r["status"],
                *[_md_value(r["overrides"].get(k, "")) for k in varying],
                *[_md_number(r["metrics"].get(m)) for m in shown],
                _md_number(r["metrics"].get(WALL), WALL),
                r["error"],
            ]
        )
    lines += _md_table(header, body)
    if s["groups"]:
        gvarying = [k for k in varying if k not in SEED_KEYS]
        gshown = shown[:3]
        lines += [
            "",
            "## Across seeds",
            "",
            "Jobs that differ only by `seed`: mean ± std (sample std, n - 1), median and n over the "
            "ok jobs, best mean first.",
            "",
        ]
        header = [*gvarying, "n ok", "failed", "seeds"]
        for m in gshown:
            header += [f"{m} mean ± std", f"{m} median"]
        body = []
        for g in s["groups"]:
            cells = [
                *[_md_value(g["overrides"].get(k, "")) for k in gvarying],
                str(g["n"]),
                str(g["n_failed"]),
                " ".join(g["seeds"]),
            ]
            for m in gshown:
                st = g["stats"][m]
                mean = _md_number(st["mean"])
                cells += [
                    mean if st["std"] is None else f"{mean} ± {_md_number(st['std'])}",
                    _md_number(st["median"]),
                ]
            body.append(cells)
        lines += _md_table(header, body)
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path, quiet: bool = False) -> Dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` (and ``summary_grouped.csv`` for seed repeats) in a sweep folder.

    Returns the paths written (empty when the folder has no job folders).
    """
    s = summarize(sweep_dir)
    sweep_dir = Path(sweep_dir)
    if not s["rows"]:
        return {}
    keys, metrics = s["override_keys"], s["metrics"]
    header = ["rank", "job", "status", *keys, *metrics, "error"]
    body = [
        [
            i,
            r["job"],
            r["status"],
            *[r["overrides"].get(k) for k in keys],
            *[r["metrics"].get(m) for m in metrics],
            r["error"],
        ]
        for i, r in enumerate(s["rows"], 1)
    ]
    paths = {"csv": sweep_dir / "summary.csv", "md": sweep_dir / "summary.md"}
    _atomic_write(paths["csv"], _csv_text(header, body))
    _atomic_write(paths["md"], render_markdown(s))
    grouped = sweep_dir / "summary_grouped.csv"
    if s["groups"]:
        gkeys = [k for k in keys if k not in SEED_KEYS]
        header = [*gkeys, "n", "n_failed", "seeds", "jobs"]
        for m in metrics:
            header += [f"{m}/mean", f"{m}/std", f"{m}/median", f"{m}/n"]
        body = []
        for g in s["groups"]:
            cells = [
                *[g["overrides"].get(k) for k in gkeys],
                g["n"],
                g["n_failed"],
                " ".join(g["seeds"]),
                " ".join(str(j) for j in g["jobs"]),
            ]
            for m in metrics:
                st = g["stats"][m]
                cells += [st["mean"], st["std"], st["median"], st["n"]]
            body.append(cells)
        _atomic_write(grouped, _csv_text(header, body))
        paths["grouped"] = grouped
    elif grouped.exists():  # a refresh after an earlier one that had seed repeats
        grouped.unlink()
    if not quiet:
        log.info("Sweep summary (%d jobs): %s", len(s["rows"]), paths["md"])
    return paths


# -- the Hydra callback ----------------------------------------------------------------------------
def _sweep_dir(config: DictConfig) -> Optional[Path]:
    try:
        return Path(str(OmegaConf.select(config, "hydra.sweep.dir")))
    except Exception:
        return None


class SweepSummary(Callback):
    """Hydra callback: refresh the sweep summary after every multirun job, and write it at the end.

    Registered in configs/hydra/default.yaml (``hydra.callbacks.sweep_summary``). The refresh after
    each job keeps a summary of the finished jobs in the sweep folder even when the sweep is killed.
    Single runs are left alone.
    """

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        if not in_multirun():
            return
        self._write(_sweep_dir(config), quiet=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._write(_sweep_dir(config), quiet=False)

    @staticmethod
    def _write(sweep_dir: Optional[Path], quiet: bool) -> None:
        if sweep_dir is None:
            return
        try:
            write_summary(sweep_dir, quiet=quiet)
        except Exception:  # a summary must never fail a sweep
            log.exception("Could not write the sweep summary in %s", sweep_dir)


# -- command line ----------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stn.sweep",
        description="Write summary.csv and summary.md (and summary_grouped.csv for seed repeats) in "
        "sweep folders (logs/<task>/multiruns/<time>/) and print the markdown.",
    )
    parser.add_argument(
        "sweep_dirs", nargs="+", type=Path, help="sweep folder(s) holding job folders 0/, 1/, ..."
    )
    args = parser.parse_args(argv)
    status = 0
    for folder in args.sweep_dirs:
        paths = write_summary(folder, quiet=True)
        if not paths:
            print(
                f"{folder}: no job folders (subfolders with .hydra/overrides.yaml or metrics.json)",
                file=sys.stderr,
            )
            status = 2
            continue
        print(paths["md"].read_text())
        print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

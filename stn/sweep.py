"""The results summary of a sweep folder, and ``python -m stn.sweep <sweep folder>`` to write it.

:func:`write_summary` reads every job folder of a sweep (``.hydra/overrides.yaml``,
``.hydra/config.yaml``, ``metrics.json``) and writes ``summary.csv`` and ``summary.md`` (one row
per job, best first, unfinished and failed jobs last) and, when jobs differ only by ``seed``,
``summary_grouped.csv`` (mean, std, median and count across seeds, also a table in ``summary.md``).
:class:`SweepSummary` (a Hydra callback, configs/hydra/default.yaml) runs it after every job and at
the end of a multirun.

The rows come from stn/sweep_jobs.py. Only the standard library and PyYAML (to read the
``.hydra/*.yaml`` files): ``python -m stn.sweep`` starts in a fraction of a second and runs where
the training stack is not installed.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import logging
import math
import os
import socket
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence

from stn.sweep_jobs import SEED_KEYS, WALL_TIME, is_finite, load_yaml, summarize

log = logging.getLogger(__name__)

# Metrics shown in summary.md (the optimized metric comes first in any case).
MARKDOWN_METRICS = ("val/acc_best", "val/acc", "test/acc", "val/iou50", "test/iou50")
# The order of the job counts in summary.md ("6 jobs (4 ok, 1 failed, 1 incomplete)").
COUNTED = ("ok", "pruned", "failed", "diverged", "interrupted", "incomplete")


# -- writing ---------------------------------------------------------------------------------------
def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def _md_number(v: Optional[float], name: str = "") -> str:
    if v is None or not is_finite(v):
        return "-"
    return f"{v:.1f}" if name == WALL_TIME else f"{v:.4f}"


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

    Parallel jobs refreshing the summary never leave half a file (the host in the name: jobs on
    several SLURM nodes can share a pid).
    """
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _csv_text(header: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[_csv_value(c) for c in row] for row in body])
    return buf.getvalue()


def render_markdown(s: Mapping[str, Any]) -> str:
    rows, metric, metrics = s["rows"], s["metric"], s["metrics"]
    counts = Counter(r["status"] for r in rows)
    varying = [k for k in s["override_keys"] if k not in s["common"]]
    shown = [m for m in dict.fromkeys([metric, *MARKDOWN_METRICS]) if m and m in metrics]
    lines = [f"# Sweep summary: {Path(s['sweep_dir']).name}", ""]
    state = ", ".join(f"{counts[k]} {k}" for k in COUNTED if counts.get(k))
    order = "No metric to sort by."
    if metric:
        order = f"Sorted by `{metric}` ({s['direction']}), failed jobs last."
    lines.append(f"{len(rows)} jobs ({state or 'none'}). {order}")
    if s["common"]:
        lines += ["", "Same in every job: " + ", ".join(f"`{k}={v}`" for k, v in s["common"].items())]
    best = load_yaml(Path(s["sweep_dir"]) / "optimization_results.yaml")
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
                _md_number(r["metrics"].get(WALL_TIME), WALL_TIME),
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


@contextmanager
def _summary_lock(sweep_dir: Path) -> Iterator[None]:
    """One summary writer at a time per sweep folder (``.summary.lock``; the OS drops it if killed).

    Jobs of a parallel launcher that finish together each read all job folders and rewrite the
    summary: unserialized, a job that read before the other's ``metrics.json`` existed could rename
    its stale summary over the other's. Serialized, the last writer has read every finished job.
    """
    with open(Path(sweep_dir) / ".summary.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_summary(sweep_dir: Path, quiet: bool = False) -> Dict[str, Path]:
    """Write ``summary.csv``, ``summary.md`` (and ``summary_grouped.csv`` for seed repeats) in a sweep folder.

    Returns the paths written (empty when the folder has no job folders). Safe to call from
    parallel jobs at once (:func:`_summary_lock`).
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        return {}
    with _summary_lock(sweep_dir):
        return _write_summary(sweep_dir, quiet)


def _write_summary(sweep_dir: Path, quiet: bool) -> Dict[str, Path]:
    s = summarize(sweep_dir)
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
def _hydra_node(config: Any, *keys: str) -> Any:
    """``config.hydra.<keys>`` of a job's config, or None (attribute access: no OmegaConf import)."""
    node = config
    for key in ("hydra", *keys):
        try:
            node = getattr(node, key)
        except Exception:  # a missing key or an interpolation that does not resolve
            return None
    return node


class SweepSummary:
    """Hydra callback: refresh the sweep summary after every multirun job, and write it at the end.

    Registered in configs/hydra/default.yaml (``hydra.callbacks.sweep_summary``); Hydra calls its
    hooks by name, so it needs no Hydra base class. The refresh after each job keeps a summary of
    the finished jobs in the sweep folder even when the sweep is killed. Single runs are left alone.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):  # Hydra's other hooks (on_run_start, ...): nothing to do
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_job_end(self, config: Any, job_return: Any = None, **kwargs: Any) -> None:
        if getattr(_hydra_node(config, "mode"), "name", None) != "MULTIRUN":
            return
        self._write(config, quiet=True)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        self._write(config, quiet=False)

    @staticmethod
    def _write(config: Any, quiet: bool) -> None:
        sweep_dir = _hydra_node(config, "sweep", "dir")
        if sweep_dir is None:
            return
        try:
            write_summary(Path(str(sweep_dir)), quiet=quiet)
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

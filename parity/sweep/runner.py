"""Run a sweep's cells as Ray tasks: one fresh worker process per cell, retried once, resumable.

Scheduling is by resources (see docs/sweep.md). Every node offers ``bench_slot: 1``. A
check cell takes ``num_cpus=1`` and a sliver of the slot (``CHECK_SLOT``); a bench
cell takes the whole slot, so it starts only on a node where no other cell runs and
nothing else starts there until it ends: timings stay fair while checks fill the
cluster. A ``device='cuda'`` cell also asks for ``num_gpus=1``. Tasks run with
``max_calls=1`` (the worker exits after its cell: no TensorFlow or torch state, and no
memory, carries into the next cell) and ``max_retries=0``: the retry is ours, so it is
visible and its reason is kept. The driver writes each result as it arrives (atomically),
so Ctrl-C leaves finished cells on disk and nothing half-written.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import ParityError, UsageError
from parity.sweep.matrix import SweepCell, SweepSpec
from parity.sweep.report import write_html
from parity.sweep.store import load_done, make_record, prepare, write_index, write_record

Execute = Callable[[SweepCell], dict[str, Any]]
CHECK_SLOT = 0.001  # a check cell's share of a node's bench slot: up to 1,000 checks may share a node
MAX_ATTEMPTS = 2  # a crashed cell is tried once more, then recorded as an error


@dataclass
class SweepReport:
    """Every cell's record (stored or new), and which cells ran in this call."""

    records: list[dict[str, Any]]
    ran: list[str] = field(default_factory=list)  # ids of cells executed now
    resumed: list[str] = field(default_factory=list)  # ids skipped: a matching result was on disk
    index: Path | None = None
    html: Path | None = None  # OUT/report.html (``parity.report``), when written

    @property
    def passed(self) -> bool:
        return all(r["status"] == "passed" for r in self.records)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.records)


def run_sweep(spec: SweepSpec | Sequence[SweepCell], out: Path, *, address: str | None = None,
              num_cpus: int | None = None, execute: Execute | None = None,
              progress: Callable[[str], None] | None = None, html: bool = True) -> SweepReport:
    """Run every cell of ``spec`` not already done in ``out``; write one JSON per cell, ``sweep.json``
    and (``html``) ``report.html``.

    Joins the Ray cluster at ``address``, uses the one this process already initialised, or
    starts a local one (``num_cpus``: default all cores, one node with ``bench_slot: 1``).
    ``execute`` replaces the cell body (default ``parity.sweep.cells.execute_cell``; tests
    plant crashes this way); it runs in the worker, so it must be importable or picklable.
    """
    say = progress or _stderr
    cells = spec.cells() if isinstance(spec, SweepSpec) else list(spec)
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise UsageError("the sweep lists the same cell twice; give each combination once")
    prepare(out)
    records: dict[str, dict[str, Any]] = {}
    todo: list[SweepCell] = []
    for cell in cells:
        done = load_done(out, cell)
        if done is not None:
            records[cell.id] = {**done, "resumed": True}
        else:
            todo.append(cell)
    resumed = [c.id for c in cells if c.id in records]
    if resumed:
        say(f"{len(resumed)} of {len(cells)} cells already have a result in {out}; running the other {len(todo)}")
    ran: list[str] = []
    if todo:
        session = RaySession(address, num_cpus)
        try:
            for cell, record in session.run(todo, out, execute, say):
                records[cell.id] = record
                ran.append(cell.id)
        finally:
            session.close()
    ordered = [records[c.id] for c in cells]
    index = write_index(out, ordered)
    page = write_html(out, ordered) if html else None
    return SweepReport(ordered, ran=ran, resumed=resumed, index=index, html=page)


class RaySession:
    """The Ray connection of one sweep: started here (and shut down in ``close``) or borrowed."""

    def __init__(self, address: str | None, num_cpus: int | None):
        try:
            import ray
        except ImportError as exc:
            raise UsageError("parity sweep runs on Ray, which is not installed: "
                             "pip install -c constraints.txt '.[ray]'") from exc
        self.ray = ray
        self.started = not ray.is_initialized()
        if self.started:
            if address is None:
                # Ray starts workers at niceness 15; on a machine shared with other work that starves
                # the cells (and skews bench cells), so the local cluster runs them at the driver's 0
                ray.init(num_cpus=num_cpus, resources={"bench_slot": 1}, include_dashboard=False,
                         log_to_driver=False, logging_level="ERROR", _system_config={"worker_niceness": 0})
            else:
                try:
                    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
                except (ConnectionError, ValueError, RuntimeError) as exc:
                    raise UsageError(f"--address {address}: cannot join that Ray cluster ({exc}); start it with "
                                     "`ray start --head --resources '{\"bench_slot\": 1}'`") from exc
        slots = ray.cluster_resources().get("bench_slot", 0)
        if slots < 1:
            self.close()
            raise UsageError("the Ray cluster offers no 'bench_slot' resource, so no cell can be scheduled; start "
                             "every node with --resources '{\"bench_slot\": 1}' (see `parity sweep --help`)")
        self.task = ray.remote(max_calls=1, max_retries=0)(run_in_worker)

    def submit(self, cell: SweepCell, execute: Execute | None) -> Any:
        resources = {"bench_slot": 1.0 if cell.kind == "bench" else CHECK_SLOT}
        gpus = 1 if cell.device == "cuda" else 0
        return self.task.options(num_cpus=1, num_gpus=gpus, resources=resources,
                                 name=f"parity-sweep:{cell.id}").remote(cell, execute, os.getcwd())

    def run(self, cells: list[SweepCell], out: Path, execute: Execute | None,
            say: Callable[[str], None]) -> Iterator[tuple[SweepCell, dict[str, Any]]]:
        """Yield ``(cell, record)`` as cells finish; each record is on disk before it is yielded."""
        pending: dict[Any, tuple[SweepCell, list[str]]] = {}
        # bench cells first: each needs a node to itself, so queue them before checks fill the nodes
        for cell in sorted(cells, key=lambda c: c.kind != "bench"):
            pending[self.submit(cell, execute)] = (cell, [])
        total, finished = len(cells), 0
        say(f"running {total} cells on Ray ({self.describe()})")
        try:
            while pending:
                [ref], _ = self.ray.wait(list(pending), num_returns=1)
                cell, failures = pending.pop(ref)
                try:
                    outcome = self.ray.get(ref)
                except Exception as exc:  # a crash of the cell (exception, killed worker, OOM): retry once
                    reason, retry = describe_failure(exc)
                    failures.append(reason)
                    if retry and len(failures) < MAX_ATTEMPTS:
                        say(f"{cell.id}: attempt {len(failures)} failed ({reason}); retrying in a fresh worker")
                        pending[self.submit(cell, execute)] = (cell, failures)
                        continue
                    record = make_record(cell, "error", failures, reason=reason)
                else:
                    record = make_record(cell, outcome.pop("status"), failures, outcome)
                write_record(out, cell, record)
                finished += 1
                say(f"[{finished}/{total}] {cell.id}: {record['status']}"
                    + (f" ({record['reason']})" if record["reason"] else "")
                    + (f" in {record['seconds']:.1f} s" if record.get("seconds") else ""))
                yield cell, record
        except BaseException:  # Ctrl-C (or our bug): stop the running cells; finished ones are on disk
            for ref in pending:
                self.ray.cancel(ref, force=True)
            if pending:
                say(f"stopped: {finished} of {total} cells finished and saved, {len(pending)} cancelled; "
                    "run the same command again to finish the rest")
            raise

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return (f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs, "
                f"{res.get('bench_slot', 0):g} bench slots")

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def run_in_worker(cell: SweepCell, execute: Execute | None, workdir: str | None = None) -> dict[str, Any]:
    """The Ray task's body: the cell in this (fresh) worker process.

    ``workdir`` is the driver's current folder: where it exists (always on the local cluster) the
    worker runs there, so a user pair's ``pkg.module`` and ``path/file.py`` resolve as they do
    for ``parity check``. On other nodes the pair's modules must be importable there.
    """
    if workdir and os.path.isdir(workdir):
        os.chdir(workdir)  # the worker serves this one cell (max_calls=1): nothing else sees the change
    if cell.device != "cuda":  # no GPU was reserved for it: keep it off the GPUs other cells hold
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if execute is None:
        from parity.sweep.cells import execute_cell

        execute = execute_cell
    return execute(cell)


def describe_failure(exc: BaseException) -> tuple[str, bool]:
    """One line saying why a cell failed, and whether a retry may help (not for a usage error)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, ParityError) or isinstance(exc, ParityError):
        err = cause if isinstance(cause, ParityError) else exc
        return f"{type(err).__name__}: {err}", False
    if cause is not None:
        lines = [line for line in str(cause).strip().splitlines() if line.strip()]
        return f"{type(cause).__name__}: {lines[0][:300] if lines else ''}", True
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}", True


def _stderr(msg: str) -> None:
    print(f"[sweep] {msg}", file=sys.stderr, flush=True)

"""Executors for the stage DAG: local (in dependency order, N worker processes) and Ray.

Every node is idempotent and keyed by content, so a crashed or cancelled run resumes by running the
same command again; finished artifacts and records are never recomputed.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from bench.errors import PtmbenchError
from bench.matrix import Node
from bench.nodes import StageNode
from bench.stages import StageEnv, run_node


def _ready(nodes: list[Node], done: set[str], running: set[str]) -> list[Node]:
    return [n for n in nodes if n.key not in done and n.key not in running and all(d in done for d in n.deps)]


def _exit_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Worker initializer: end this process as soon as the runner that spawned it is gone.  A runner killed
    by a signal cannot stop its pool, and an orphaned worker would otherwise train on for up to an hour
    holding its stage's lock (blocking the next run); orphans are re-parented, so the parent pid changes.
    Whatever it was computing is discarded as after a SIGKILL: a rerun resumes from the finished stages."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="ptmbench-parent-watch", daemon=True).start()


def _worker(work: StageNode, env_dict: dict[str, Any]) -> dict[str, Any]:
    """Process entry point (``work`` arrives pickled): quiet libraries, then run the node."""
    from bench.quiet import quiet_libraries

    quiet_libraries()
    return run_node(work, StageEnv(**env_dict))


class LocalExecutor:
    """Runs nodes in dependency order; ``workers=1`` runs in this process, more use spawned processes."""

    def __init__(self, workers: int = 1) -> None:
        if workers < 1:
            raise PtmbenchError(f"--workers must be >= 1, got {workers}")
        self.workers = workers

    def run(self, nodes: list[Node], env: StageEnv, done: set[str], on_done: Callable[[Node, dict], None]) -> None:
        if self.workers == 1:
            for n in nodes:
                if n.key in done:
                    continue
                on_done(n, run_node(n.work, env))
                done.add(n.key)
            return
        threads = max(1, (os.cpu_count() or 2) // self.workers)
        env_dict = {**asdict(env), "threads": env.threads or threads, "progress": False}
        ctx = mp.get_context("spawn")
        with cf.ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_exit_with_parent,
                                    initargs=(os.getpid(),)) as pool:
            running: dict[cf.Future, Node] = {}
            try:
                while len(done) < len(nodes):
                    for n in _ready(nodes, done, {x.key for x in running.values()}):
                        if len(running) >= self.workers:
                            break
                        running[pool.submit(_worker, n.work, env_dict)] = n
                    if not running:
                        raise RuntimeError("the stage graph has a cycle or a missing dependency")
                    finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for f in finished:
                        n = running.pop(f)
                        on_done(n, f.result())
                        done.add(n.key)
            except BaseException:
                for f in running:
                    f.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise


class RayExecutor:
    """Each node is a Ray task with its CPU/GPU needs; artifacts and records go to the shared store paths."""

    def __init__(self, address: str | None = None, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0) -> None:
        try:
            import ray
        except ImportError as e:
            raise PtmbenchError("the Ray executor needs ray: pip install 'ptm-backdoor-bench[ray]'") from e
        self.ray = ray
        self.address = address
        self.cpus = cpus_per_task
        self.gpus = gpus_per_task

    def run(self, nodes: list[Node], env: StageEnv, done: set[str], on_done: Callable[[Node, dict], None]) -> None:
        ray = self.ray
        if not ray.is_initialized():
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        task = ray.remote(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=0)(_ray_worker)
        env_dict = {**asdict(env), "progress": False, "threads": env.threads or max(1, int(self.cpus))}
        refs: dict[str, Any] = {}
        by_key = {n.key: n for n in nodes}
        for n in nodes:  # dependency order; Ray starts a task once the refs it is given are ready
            if n.key not in done:
                refs[n.key] = task.remote(n.work, env_dict, *[refs[d] for d in n.deps if d in refs])
        pending = {ref: key for key, ref in refs.items()}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                key = pending.pop(ref)
                on_done(by_key[key], ray.get(ref))
                done.add(key)


def _ray_worker(work: StageNode, env_dict: dict[str, Any], *deps: Any) -> dict[str, Any]:
    """Ray task body; ``deps`` are the results of the nodes it depends on (only waited for)."""
    return _worker(work, env_dict)


def execute(nodes: list[Node], env: StageEnv, executor: Any, is_done: Callable[[Node], bool],
            progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run what a cell still needs (:func:`bench.matrix.stage_status`): every cell not recorded yet and every
    stage above one that is not cached; a stage whose cells are all recorded is skipped, cached or not.
    Returns counts and per-node wall times."""
    from bench.matrix import CACHED, SKIP, stage_status

    status = stage_status(nodes, is_done)
    done = {k for k, s in status.items() if s == CACHED}
    todo = [n for n in nodes if status[n.key] not in (CACHED, SKIP)]
    skipped = sum(s == SKIP for s in status.values())
    nodes = [n for n in nodes if status[n.key] != SKIP]  # every dependency of a todo node is in here
    log(f"matrix: {len(nodes) + skipped} stages, {len(done)} cached, {len(todo)} to run"
        + (f", {skipped} not needed (every cell below them is recorded)" if skipped else ""))
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="matrix", dynamic_ncols=True)
    walls: dict[str, float] = {}
    computed: list[str] = []
    t0 = time.perf_counter()

    def on_done(n: Node, res: dict[str, Any]) -> None:
        walls[n.label] = res.get("wall_s", 0.0)
        if res.get("computed", True):
            computed.append(n.key)
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(n.label[:60])
        else:
            how = "" if res.get("computed", True) else ", made by another runner"
            log(f"  done {n.label} ({res.get('wall_s', 0):.1f}s{how})")

    try:
        executor.run(nodes, env, done, on_done)
    finally:
        if bar is not None:
            bar.close()
    log(f"matrix: computed here {len(computed)} of {len(todo)} stages")
    return {"stages": len(nodes) + skipped, "cached": len(done), "skipped": skipped, "ran": len(walls),
            "walls": walls, "computed": computed,
            "wall_s": round(time.perf_counter() - t0, 1)}

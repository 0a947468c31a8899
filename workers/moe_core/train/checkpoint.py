"""Save and resume training state with torch.distributed.checkpoint, to local disk or S3, manifest last.

A checkpoint holds the model (router bias included: it is a persistent buffer), the optimizer, the trainer
state (step, sampler position, routing totals; the LR is a pure function of the step), every rank's RNG
states and the run's tokenizer. Each rank writes its own files and a part list (`parts/rank-NNNNN.json`
with sizes and sha256); rank 0 waits for every part and only then writes `manifest.json`. That rank-local
bookkeeping needs no collective, so the asynchronous save can finish in a background thread.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from moe_control.checkpoints import (
    MANIFEST_NAME,
    CheckpointFile,
    CheckpointManifest,
    CheckpointStore,
    LocalCheckpointStore,
    SkippedCheckpoint,
    describe_file,
    find_latest_complete_checkpoint,
    prune_checkpoints,
    step_dir_name,
    verify_local_files,
)
from moe_core.train.errors import CheckpointFailed

log = logging.getLogger("moe_core.train")

TRAINER_STATE = "trainer_state.json"
TOKENIZER = "tokenizer.json"
PARTS_DIR = "parts"
PART_TIMEOUT_S = 900.0
WRITER_THREADS = 4


def _rng_file(rank: int) -> str:
    return f"rng/rank-{rank:05d}.pt"


def capture_rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointManager:
    """One run's checkpoints in ``store``; ``work_dir`` holds local staging (S3) and downloaded copies."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        run_id: str,
        work_dir: Path,
        rank: int = 0,
        world_size: int = 1,
        keep: int = 3,
        async_save: bool = False,
        process_group: Any = None,
        timing_log: Path | None = None,
    ):
        self.store = store
        self.run_id = run_id
        self.work_dir = Path(work_dir)
        self.rank, self.world_size = rank, world_size
        self.keep = keep
        self.async_save = async_save
        self.process_group = process_group
        self.local = isinstance(store, LocalCheckpointStore)
        self._pending: threading.Thread | None = None
        self._pending_error: BaseException | None = None
        self.skipped: list[SkippedCheckpoint] = []
        self.last_saved_step: int | None = None
        self.timing_log = timing_log  # rank 0 appends {"step", "complete_s"}: save start to manifest written
        self._started: dict[int, float] = {}

    # ---- saving -----------------------------------------------------------------------------------------
    def _staging(self, step: int) -> Path:
        if self.local:
            return self.store.step_path(step)
        return self.work_dir / ".checkpoint-staging" / step_dir_name(step)

    def save(
        self, step: int, model, optimizer, trainer_state: dict, tokenizer_path: Path, metrics: dict
    ) -> float:
        """Write the checkpoint of ``step``; returns the seconds the caller was blocked. With async_save the
        upload, the part lists and the manifest finish in a background thread."""
        t0 = time.perf_counter()
        self.wait()
        self._started[step] = t0
        staging = self._staging(step)
        if self.rank == 0:
            # A folder of this step can only be left from an attempt that died before its manifest.
            self.store.delete_step(step)
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        if self.world_size > 1:
            dist.barrier()
        staging.mkdir(parents=True, exist_ok=True)
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        if self.rank == 0:
            (staging / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
            shutil.copyfile(tokenizer_path, staging / TOKENIZER)
        (staging / _rng_file(self.rank)).parent.mkdir(parents=True, exist_ok=True)
        torch.save(capture_rng_state(), staging / _rng_file(self.rank))
        if self.async_save:
            future = dcp.async_save(
                state, storage_writer=self._writer(staging), process_group=self.process_group
            )
            self._pending_error = None
            self._pending = threading.Thread(
                target=self._finish_guarded,
                args=(step, staging, future, metrics),
                name="checkpoint",
                daemon=True,
            )
            self._pending.start()
        else:
            dcp.save(state, storage_writer=self._writer(staging), process_group=self.process_group)
            self._finish(step, staging, None, metrics)
        return time.perf_counter() - t0

    @staticmethod
    def _writer(staging: Path):
        # Several files per rank, written by several threads, so they can also be hashed in parallel.
        return dcp.FileSystemWriter(str(staging), thread_count=WRITER_THREADS)

    def _finish_guarded(self, step: int, staging: Path, future: Future, metrics: dict) -> None:
        try:
            self._finish(step, staging, future, metrics)
        except BaseException as e:  # surfaced by wait() in the training thread
            self._pending_error = e

    def _finish(self, step: int, staging: Path, future: Future | None, metrics: dict) -> None:
        if future is not None:
            future.result()
        mine = sorted(p.name for p in staging.glob(f"__{self.rank}_*.distcp")) + [_rng_file(self.rank)]
        if self.rank == 0:
            mine += [".metadata", TRAINER_STATE, TOKENIZER]
        with ThreadPoolExecutor(max_workers=min(WRITER_THREADS, len(mine))) as pool:
            files = list(pool.map(lambda rel: describe_file(staging, rel), mine))
        if not self.local:
            for f in files:
                self.store.put_file(step, f.path, staging / f.path)
        part = json.dumps([f.model_dump() for f in files]).encode()
        self.store.put_bytes(step, f"{PARTS_DIR}/rank-{self.rank:05d}.json", part)
        if self.rank == 0:
            everything = self._collect_parts(step)
            manifest = CheckpointManifest(
                run_id=self.run_id,
                step=step,
                world_size=self.world_size,
                files=everything,
                metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float)},
            )
            self.store.put_bytes(step, MANIFEST_NAME, manifest.to_json())
            deleted = prune_checkpoints(self.store, self.keep)
            if deleted:
                log.info("pruned checkpoints of steps %s (keeping %d)", deleted, self.keep)
            took = time.perf_counter() - self._started.pop(step, time.perf_counter())
            log.info(
                "checkpoint of step %d complete at %s (%.2f s)", step, self.store.step_location(step), took
            )
            if self.timing_log is not None:
                with self.timing_log.open("a") as f:
                    f.write(
                        json.dumps({"step": step, "complete_s": took, "bytes": manifest.total_bytes}) + "\n"
                    )
        if not self.local:
            shutil.rmtree(staging, ignore_errors=True)
        self.last_saved_step = step

    def _collect_parts(self, step: int) -> list[CheckpointFile]:
        deadline = time.monotonic() + PART_TIMEOUT_S
        names = [f"{PARTS_DIR}/rank-{r:05d}.json" for r in range(self.world_size)]
        while True:
            sizes = self.store.file_sizes(step)
            if all(n in sizes for n in names):
                break
            if time.monotonic() > deadline:
                missing = [n for n in names if n not in sizes]
                raise CheckpointFailed(f"step {step}: ranks never wrote their parts {missing}")
            time.sleep(0.1)
        scratch = self.work_dir / ".checkpoint-parts" / step_dir_name(step)
        self.store.download(step, names, scratch)
        files = [CheckpointFile(**f) for n in names for f in json.loads((scratch / n).read_text())]
        shutil.rmtree(scratch, ignore_errors=True)
        return files

    def wait(self) -> None:
        """Block until a pending asynchronous save is complete; raise if it failed."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        if self._pending_error is not None:
            err, self._pending_error = self._pending_error, None
            raise CheckpointFailed(f"asynchronous checkpoint failed: {err}") from err

    # ---- resuming ---------------------------------------------------------------------------------------
    def _local_copy(self, manifest: CheckpointManifest, verify: bool) -> tuple[Path, list[str]]:
        """A local folder holding the checkpoint's files, and the problems found (empty: it is whole)."""
        if self.local:
            root = self.store.step_path(manifest.step)
        else:
            root = self.work_dir / ".checkpoint-cache" / step_dir_name(manifest.step)
            have = all(
                (root / f.path).is_file() and (root / f.path).stat().st_size == f.size for f in manifest.files
            )
            if not have:
                shutil.rmtree(root, ignore_errors=True)
                self.store.download(manifest.step, [f.path for f in manifest.files], root)
        if verify:
            return root, verify_local_files(manifest, root)
        bad = [
            f.path
            for f in manifest.files
            if not (root / f.path).is_file() or (root / f.path).stat().st_size != f.size
        ]
        return root, [f"{p} is missing or has the wrong size" for p in bad]

    def find_resumable(self) -> CheckpointManifest | None:
        """Rank 0's choice: the newest complete checkpoint whose files all pass their checksums."""
        rejected: dict[int, str] = {}
        while True:
            search = find_latest_complete_checkpoint(self.store, exclude=rejected)
            self.skipped = search.skipped
            for s in search.skipped:
                log.warning("skipping checkpoint of step %d: %s", s.step, s.reason)
            if search.manifest is None:
                return None
            _, problems = self._local_copy(search.manifest, verify=True)
            if not problems:
                return search.manifest
            rejected[search.manifest.step] = "; ".join(problems)

    def resume_point(self) -> tuple[CheckpointManifest, Path] | None:
        """Every rank: the checkpoint to resume from (rank 0 chooses) and its local copy; None = fresh start."""
        chosen: list[Any] = [None]
        if self.rank == 0:
            manifest = self.find_resumable()
            chosen = [manifest.model_dump() if manifest else None]
        if self.world_size > 1:
            dist.broadcast_object_list(chosen, src=0)
        if chosen[0] is None:
            return None
        manifest = CheckpointManifest.model_validate(chosen[0])
        root, problems = self._local_copy(manifest, verify=False)
        if problems:
            raise CheckpointFailed(
                f"checkpoint of step {manifest.step} on rank {self.rank}: {'; '.join(problems)}"
            )
        return manifest, root

    def load(self, manifest: CheckpointManifest, root: Path, model, optimizer) -> dict:
        """Load a checkpoint's model, optimizer and RNG states (every rank); return its trainer state."""
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(root), process_group=self.process_group)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        rng = root / _rng_file(self.rank)
        if rng.is_file() and manifest.world_size == self.world_size:
            restore_rng_state(torch.load(rng, weights_only=False))
        if self.rank == 0:
            # Steps after the resumed one will be trained again: folders left from them are stale.
            for step in self.store.steps():
                if step > manifest.step:
                    log.warning("removing checkpoint folder of step %d, newer than the resumed step", step)
                    self.store.delete_step(step)
        log.info(
            "resumed from the checkpoint of step %d at %s",
            manifest.step,
            self.store.step_location(manifest.step),
        )
        state = json.loads((root / TRAINER_STATE).read_text())
        if not self.local:  # the downloaded copy is in memory now; a full checkpoint is too big to keep twice
            if self.world_size > 1:
                dist.barrier()  # ranks of one node read the same copy
            shutil.rmtree(self.work_dir / ".checkpoint-cache", ignore_errors=True)
        return state

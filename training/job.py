"""The one training pipeline every kind runs: distributed set-up, work dir, data, tokenizers, seed, model,
resume check, fit, export, evaluation through ONNX, model card."""

from __future__ import annotations

import logging
from pathlib import Path

from training.evaluate import evaluate_version
from training.export import export_run
from training.kind import Job
from training.kinds import TOOLS
from training.loop import check_same_model, fit, init_distributed, prepare_work_dir, seed_everything
from training.repo_writer import VersionWriter, data_provenance, save_run_spec

log = logging.getLogger("seqserve.train")


def run_job(job: Job) -> Path | None:
    """Train, export, evaluate; returns the new version folder (on the main process, None on the others)."""
    env = init_distributed(job.train.device)
    work_dir = job.work_dir or Path("runs") / job.out.name
    prepare_work_dir(work_dir, job.resume)
    splits = job.load()
    if env.main and not (job.resume and job.tokenizers_ready(work_dir)):
        job.train_tokenizers(splits.train, work_dir)
    env.barrier()
    seed_everything(job.train.seed)
    built = job.build(splits, work_dir, env.device, env.main)
    if job.resume:
        check_same_model(work_dir, built.config)
        env.barrier()  # every process has read model.json before the main one rewrites it
    if env.main:
        log.info("%s", built.summary)
        sizes = len(splits.train), len(splits.valid), len(splits.test)
        save_run_spec(work_dir, kind=job.kind, model=built.config, **built.spec,
                      provenance=data_provenance(job.data.source, job.data, *sizes))
    history = fit(built.model, built.task, job.train, work_dir, env, resume=job.resume)
    if not env.main:
        return None
    version_dir = export_run(work_dir, job.out, job.version, built.export_texts,
                             training={**vars(job.train), **built.record, "best_epoch": history.best_epoch + 1,
                                       "averaged": history.averaged,
                                       "history": history.epochs})
    for split in TOOLS[job.kind].evaluate_splits:
        evaluate_version(version_dir, getattr(splits, split), split=split)
    VersionWriter(version_dir).write_card()
    return version_dir

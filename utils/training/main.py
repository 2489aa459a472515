"""The two entry points every data set's ``train.py`` and ``test.py`` call: :func:`train_main`, :func:`test_main`.

Run folder (``--output``, default ``output/train/<time>-<dataset>-<model>-<suffix>``, unique: :func:`default_output`;
on ``--resume`` the resumed run's folder; claimed by rank 0 for the run's life: ``utils.run.run_claim``): ``args.yaml``
(the resolved config), ``run.json`` (how each start was made: command, git commit, versions, host;
``utils.run.provenance``), ``summary.csv`` (one row per epoch), ``log.txt``, ``last.pth.tar``,
``model_best.pth.tar`` and, when tensorboard is installed, its event files. Only rank 0 writes or prints. What a
start checks before it writes, and what a resume may change: ``utils.run.run_folder``.

Randomness: every epoch reseeds Python, NumPy and torch from (seed, rank, epoch), and within an epoch every
augmentation, mixup and random-erasing draw is keyed by (seed, rank, epoch, position) (``utils.data.resumable_data``).
Each rank thus gets its own streams, and a run resumed at epoch k, or at any optimizer step of it
(``utils.training.preemption``), draws exactly what an uninterrupted run draws from there on.
"""
import csv
import io
import json
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np
import torch
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3, random_seed
from torch.nn.parallel import DistributedDataParallel

from models import CheckpointError, checkpoint_filter_fn, read_checkpoint

from utils.config import (EVALUATION_KEYS, TEST_KEYS, Config, ConfigError, check_cross_keys, config_from_checkpoint,
                          load_config)
from utils.data.folder_data import check_checkpoint_classes, class_names, dataset_label
from utils.data.input_checks import check_augment_policy
from utils.data.loaders import (build_datasets, build_eval_loader, build_loaders, mixes_in_loader, resolve_data_config,
                                set_mixup_epoch, write_sample_files)
from utils.errors import UserError, free_space_text, writing
from utils.run.allow_change import allowed_keys, apply_allowed_changes, describe
from utils.run.atomic import append_text, replace_atomically
from utils.run.checkpoint import BEST, LAST, make_checkpoint, resume_checkpoint, save_run_checkpoint
from utils.run.checkpoint_history import keep_history
from utils.run.finished_run import finished_message, needs_repair
from utils.run.provenance import file_sha256, record_run_start, run_provenance
from utils.run.results_file import append_row, check_results_file
from utils.run.run_claim import make_default_folder, release_claims, timestamp, unique_suffix
from utils.run.run_folder import (Resume, best_file_epoch, check_free_space, check_fresh_output, check_output_location,
                                  check_same_recipe, checkpoint_size_estimate, claim_fresh_output, claim_resumed_output,
                                  open_resume, save_run_config, start_folder)
from utils.training.distributed import (DistInfo, cleanup_distributed, fail_together, init_distributed, select_device,
                                        share_failure, sync_bn_stats)
from utils.training.engine import evaluate, train_loss_fn, train_one_epoch
from utils.training.factory import (architecture_label, architecture_overrides, build_model, check_model, override_note,
                                    run_name)
from utils.training.finetune import initial_checkpoint_to_load, load_initial_checkpoint
from utils.training.memory_estimate import check_step_memory, out_of_memory_reported
from utils.training.preemption import (StopRequests, check_in_epoch, in_epoch_state, restore_signal_handlers, stop,
                                       stop_line)
from utils.training.progress import RunClock, format_duration
from utils.training.timm_flags import (check_experiment, check_wandb, compile_model, fit_schedule, prepare_model,
                                       wandb_logger)

SUMMARY_COLUMNS = ['epoch', 'train_loss', 'eval_loss', 'eval_top1', 'eval_top5', 'lr']
EMA_COLUMNS = ['ema_eval_loss', 'ema_eval_top1', 'ema_eval_top5']


def seed_everything(seed: int, rank: int = 0, epoch: Optional[int] = None) -> None:
    """timm's ``random_seed`` with a seed derived from (seed, rank, epoch)."""
    if epoch is None:
        random_seed(seed, rank)
    else:
        random_seed(int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0]) % 2 ** 31, 0)


def amp_setup(cfg: Config, device: torch.device):
    """``(autocast dtype or None, GradScaler or None)`` of the config on ``device``.

    ``amp_dtype: auto`` is float16 on CUDA (what the published runs trained with: native AMP, fp16 with a gradient
    scaler) and bfloat16 on CPU (fast there, and float32's exponent range needs no scaler). float16 always comes with
    a ``torch.amp.GradScaler`` for the device's type, so ``--amp-dtype float16`` on CPU runs the CUDA path itself
    (fp16 autocast, scaled losses, skipped steps on inf gradients, the scaler's state in the checkpoint): a
    rehearsal of the faithful GPU recipe, slower than bfloat16 on CPU. The pinned PyTorch (2.14) has fp16 autocast
    and the scaler on both devices a config can name (cpu, cuda), so nothing is refused here.
    """
    if not cfg.amp:
        return None, None
    name = cfg.amp_dtype if cfg.amp_dtype != 'auto' else ('float16' if device.type == 'cuda' else 'bfloat16')
    dtype = getattr(torch, name)
    return dtype, (torch.amp.GradScaler(device.type) if dtype == torch.float16 else None)


def _dtype_name(dtype: Optional[torch.dtype], none: str = 'off') -> str:
    return str(dtype).replace('torch.', '') if dtype else none


def build_optimizer(model_or_params, cfg: Config):
    """timm's optimizer of the config (given a model, timm exempts biases and normalisation from weight decay)."""
    return create_optimizer_v2(model_or_params, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               eps=cfg.opt_eps)


def schedule_length(cfg: Config) -> int:
    """Epochs of the config's schedule, cooldown included, as timm counts them (built on a dummy parameter)."""
    return build_schedule(build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg), cfg)[1]


def build_schedule(optimizer, cfg: Config) -> tuple:
    """``(scheduler, epochs including the cooldown)``: timm's schedule of the config, stepped once per epoch."""
    return create_scheduler_v2(optimizer, sched=cfg.sched, num_epochs=cfg.epochs, cooldown_epochs=cfg.cooldown_epochs,
                               min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs)


def check_optimizer_and_schedule(cfg: Config) -> None:
    """``opt`` and ``sched`` name a timm optimizer and an epoch-stepped timm schedule: both are built and stepped
    once on a dummy parameter (timm decides what exists), so that a typo stops the run before any data is read."""
    try:
        optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], cfg)
    except (ValueError, AssertionError, KeyError) as e:
        raise ConfigError(f"config key 'opt' is {cfg.opt!r}: timm cannot build it ({str(e).rstrip('.')}).\n"
                          f"Fix: --opt with a timm optimizer name, e.g. adamw, sgd, lamb "
                          f"(timm.optim.list_optimizers()).") from None
    try:
        scheduler, _ = build_schedule(optimizer, cfg)
        scheduler.step(1)  # stepped once per epoch, without a metric
    except (ValueError, AssertionError, TypeError, AttributeError) as e:
        raise ConfigError(f"config key 'sched' is {cfg.sched!r}: not a timm schedule this engine can step once per "
                          f"epoch ({str(e).rstrip('.')}).\nFix: --sched cosine (the published one), or step, "
                          f"multistep, tanh, poly.") from None


def default_output(cfg: Config, kind: str) -> str:
    """``output/<kind>/<time to the ms>-<dataset>-<architecture>-<SLURM job, if any>-<random>``: two runs started at
    the same instant, or two tasks of a SLURM array, get different names (``utils.run.run_claim``); the architecture is
    the one that runs, not only the variant's (``utils.training.factory.run_name``). ``--experiment NAME`` names the
    folder ``output/train/NAME`` instead (:func:`_train`)."""
    name = run_name(cfg.model, architecture_overrides(cfg))
    return os.path.join('output', kind, f'{timestamp()}-{dataset_label(cfg)}-{name}-{unique_suffix()}')


class RunLog:
    """Prints on rank 0 and appends to ``<output>/log.txt``; TensorBoard scalars when tensorboard is installed.

    ``log.txt`` is a convenience copy of the console: when an append fails (disk full), one warning says so and the
    run goes on (its summary and checkpoints are written, and fail loudly, on their own)."""

    def __init__(self, output: Optional[str], enabled: bool):
        self.output, self.enabled, self.writer, self.copying = output, enabled, None, bool(output)
        if enabled and output:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(log_dir=output)
            except ImportError:  # tensorboard is optional
                pass

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        print(message, flush=True)
        if self.copying:
            path = os.path.join(self.output, 'log.txt')
            try:
                append_text(path, message + '\n')  # never through a link (utils.run.atomic)
            except OSError as e:
                self.copying = False
                print(f'warning: cannot append to {path} ({e.strerror or e}; {free_space_text(path)}): the console '
                      f'lines are not copied there from now on; summary.csv and the checkpoints are written as '
                      f'before.', file=sys.stderr, flush=True)

    def scalars(self, values: dict, step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_text(path: str, text: str, consequence: str) -> None:
    """Write ``text`` to ``path`` (its folder created) atomically (``utils.run.atomic``); a failure is a one-screen
    error that ends with ``consequence``."""
    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)
    with writing(path, consequence):
        os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
        replace_atomically(path, write)


def _read_summary(path: str, before_epoch: int) -> list:
    if not os.path.isfile(path):
        return []
    with open(path, newline='') as f:
        return [row for row in csv.DictReader(f) if int(row['epoch']) < before_epoch]


def _write_summary(path: str, rows: list, columns: list) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction='ignore', lineterminator='\n')
    writer.writeheader()
    writer.writerows(rows)
    last = os.path.join(os.path.dirname(path), 'last.pth.tar')
    write_text(path, buffer.getvalue(), f'{os.path.basename(path)} is left as it was, and so is last.pth.tar (the '
                                        f'previous epoch). Free some space, then continue with --resume {last}')


def train_main(argv: Optional[Sequence[str]] = None, default_config: Optional[str] = None) -> dict:
    """Train (and evaluate every epoch) as configured; returns the best epoch's evaluation."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv, default_config)
    resume = None
    if cfg.resume:
        cfg, resume = open_resume(cfg, argv)
    allowed_keys(cfg)  # --allow-change names only keys that may change mid-run, and only with --resume
    check_experiment(cfg)
    schedule_note = fit_schedule(cfg)
    check_cross_keys(cfg)
    check_wandb(cfg)
    info = init_distributed(cfg)
    try:
        provenance = dict(run_provenance([sys.argv[0], *argv], info.device, info.world),
                          resumed_from=resume.path if resume is not None else None)
        return _train(cfg, info, resume, provenance, [schedule_note] if schedule_note else [])
    except Exception as e:  # one process failed mid-run: one message for the run (utils.training.distributed)
        share_failure(info, e)
        raise
    finally:
        release_claims()  # the run folder's claim (utils.run.run_claim), taken by rank 0
        restore_signal_handlers()
        cleanup_distributed()


def _train(cfg: Config, info: DistInfo, resume: Optional[Resume], provenance: Optional[dict] = None,
           notes: Sequence[str] = ()) -> dict:
    """The run. Under several processes each start-up step is a :class:`fail_together` block, so that a failure in
    one process (rank 0's checks and writes of the run folder included) stops them all with one message, and the
    run folder is written (rank 0) only once every process has its data, model and checkpoint."""
    device = info.device
    with fail_together(info):  # the config, as every process resolves it; the output folder (rank 0)
        resolve_data_config(cfg)
        amp_dtype, scaler = amp_setup(cfg, device)
        if cfg.amp and cfg.amp_dtype == 'auto':  # recorded as what ran: a resume elsewhere keeps it (or is refused)
            cfg.amp_dtype = _dtype_name(amp_dtype)
        check_optimizer_and_schedule(cfg)
        finished = None
        check_model(cfg)  # the name and the input layout, before any data is read or folder written
        check_augment_policy(cfg)
        memory_note = check_step_memory(cfg, device, info.world if device.type == 'cpu' else 1)
        if resume is not None:
            # also: the same initial_checkpoint, which the resume supersedes; the global batch on another world size
            recorded, run_changes = apply_allowed_changes(resume.recorded, cfg, resume.progress['epoch'] + 1)
            run_changes = list(resume.checkpoint.get('changes') or []) + run_changes  # this run's, in order
            batch_note = check_same_recipe(recorded, cfg, info.world, resume.world)
            initial_checkpoint = None
            finished = finished_message(cfg, resume.progress, schedule_length(cfg))
            if finished is not None and needs_repair(cfg.output, resume.progress):
                finished = None  # complete, but cut in its last save: the start repairs it and trains no epoch
            if info.is_main and finished is None:  # a complete run needs no writable folder: it writes nothing
                check_output_location(cfg.output, resume=True)
                claim_resumed_output(cfg)  # held until the run ends: a second start is refused
        else:
            initial_checkpoint, run_changes = initial_checkpoint_to_load(cfg), []
            if cfg.output is None and cfg.experiment:  # timm's --experiment: output/train/NAME, new or empty
                cfg.output = os.path.join('output', 'train', cfg.experiment)
            if info.is_main:
                made = cfg.output is None
                if made:  # a new folder of a unique name, made exclusively (utils.run.run_claim)
                    cfg.output = make_default_folder(lambda: default_output(cfg, 'train'))
                else:
                    check_fresh_output(cfg.output)
                claim_fresh_output(cfg.output, made)  # held until the run ends: a second start is refused
            else:
                cfg.output = cfg.output or default_output(cfg, 'train')  # only rank 0 writes into it
    if finished is not None:  # a complete run: said, and nothing touched (utils.run.finished_run)
        if info.is_main:
            print(finished, flush=True)
        return dict(best_top1=resume.progress.get('best_metric'), best_epoch=resume.progress.get('best_epoch'),
                    output=cfg.output)

    if cfg.dataset_download and info.distributed:  # one process downloads, the others wait for it
        with fail_together(info):
            if info.is_main:
                build_datasets(cfg)
    with fail_together(info):  # data, model, optimizer and the resumed state, in every process
        train_loader, eval_loader, mixup_fn = build_loaders(cfg, info.distributed, info.rank, info.world, device)
        loss_fn = train_loss_fn(mixup_fn, cfg.smoothing)
        batch_mixup = None if mixes_in_loader(mixup_fn) else mixup_fn  # images are mixed by the loader's collate
        classes = class_names(train_loader.dataset)
        eval_dtype = amp_dtype if cfg.eval_amp else None

        seed_everything(cfg.seed)  # the same initial weights on every rank
        model = build_model(cfg, training=True)
        loaded = load_initial_checkpoint(model, initial_checkpoint, cfg.use_ema, cfg.trust_checkpoint) \
            if initial_checkpoint else None
        model = model.to(device)
        model, model_notes = prepare_model(model, cfg, info.distributed)  # sync_bn, channels_last
        optimizer = build_optimizer(model, cfg)
        # created before a resume loads the optimizer state, so the schedule follows this run's config
        scheduler, num_epochs = build_schedule(optimizer, cfg)
        ema = ModelEmaV3(model, decay=cfg.model_ema_decay) if cfg.model_ema else None
        start_epoch, best_metric, best_epoch, in_epoch, last_metric = 0, None, None, None, None
        if resume is not None:
            start_epoch, best_metric, best_epoch = resume_checkpoint(resume.checkpoint, resume.path, model,
                                                                     optimizer, scaler, ema)
            last_metric = resume.checkpoint.get('metric')
            if 'in_epoch' in resume.checkpoint:  # saved between two optimizer steps of start_epoch
                in_epoch = check_in_epoch(resume.checkpoint['in_epoch'], resume.path, start_epoch, info.world,
                                          info.rank)
            resume.checkpoint = None  # free its memory
        scheduler.step(start_epoch)

    # the run folder is written only once the config, checkpoint, data and output are known to be good
    notes, rows = list(notes) + model_notes, []
    summary_path = os.path.join(cfg.output, 'summary.csv')
    with fail_together(info):
        if info.is_main:
            check_free_space(cfg.output, checkpoint_size_estimate(model, optimizer, ema), cfg.checkpoint_hist)
            notes = list(notes) + start_folder(cfg, resume)
            if provenance is not None:  # run.json: how this start was made (one entry per start)
                with writing(cfg.output, 'The run has not started.'):
                    record_run_start(cfg.output, provenance)
            with writing(cfg.output, 'The run has not started.'):
                write_sample_files(cfg.output, train_loader.dataset, eval_loader.dataset.dataset)
            rows = _read_summary(summary_path, start_epoch)
    ddp_model = DistributedDataParallel(model, device_ids=[device] if device.type == 'cuda' else None) \
        if info.distributed else model
    train_model, eval_model = compile_model(ddp_model, cfg), compile_model(model, cfg)  # as is without --torchcompile
    log = RunLog(cfg.output, info.is_main)
    log_wandb = wandb_logger(cfg, info.is_main)
    if resume is not None:
        log(f'resumed from {resume.path} at epoch {start_epoch}' + (f', batch {in_epoch["batch"]}' if in_epoch
                                                                    else '')
            + (f'; deliberate changes (--allow-change): {describe(run_changes)}' if run_changes else ''))
        if batch_note:
            log(batch_note)
    if loaded:
        log(loaded)
    for note in notes:
        log(note)
    columns = SUMMARY_COLUMNS + (EMA_COLUMNS if ema is not None else [])
    if override_note(cfg):
        log(override_note(cfg))
    log(f'{architecture_label(cfg.model, architecture_overrides(cfg))}: '
        f'{sum(p.numel() for p in model.parameters()):,} parameters, T={cfg.time_steps}, '
        f'{dataset_label(cfg)} ({len(train_loader.dataset)} train / {len(eval_loader.dataset.dataset)} eval samples), '
        f'{num_epochs} epochs, {info.world} process(es) on {device}, '
        f'amp {_dtype_name(amp_dtype)}, evaluation in {_dtype_name(eval_dtype, "float32")}, run {cfg.output}')
    if cfg.grad_accum_steps > 1:
        log(f'gradient accumulation: {cfg.grad_accum_steps} batches per optimizer step, global batch {cfg.batch_size} '
            f'x {info.world} x {cfg.grad_accum_steps} = {cfg.batch_size * info.world * cfg.grad_accum_steps}')
    if memory_note:
        log(memory_note)
    clock = RunClock(num_epochs)

    stops = StopRequests(cfg.checkpoint_interval, device, info.distributed)
    last_path = os.path.join(cfg.output, LAST)

    def at_step(next_batch: int, sums: dict) -> None:
        """After an optimizer step: the mid-epoch save of utils.training.preemption when the interval or a signal
        asks."""
        request = stops.poll()
        if request is None:
            return
        state = make_checkpoint(model, optimizer, epoch - 1, cfg, last_metric, best_metric, best_epoch, scaler, ema,
                                info.world, provenance)
        state['in_epoch'] = in_epoch_state(epoch, next_batch, sums, device, info.distributed)
        with fail_together(info):
            if info.is_main:
                save_run_checkpoint(cfg.output, state, False)
        stops.saved()
        if request:
            total = len(train_loader) if cfg.limit_train_batches is None else \
                min(len(train_loader), cfg.limit_train_batches)
            stop(request, stop_line(request, epoch, next_batch, total, last_path, info.world), log)
        log(f'epoch {epoch}: saved the state after batch {next_batch} to {last_path} (--checkpoint-interval)')

    stops.install()  # until train_main returns (restore_signal_handlers in its finally)
    for epoch in range(start_epoch, num_epochs):
        clock.start_epoch()
        seed_everything(cfg.seed, info.rank, epoch)
        if hasattr(train_loader.sampler, 'set_epoch'):
            train_loader.sampler.set_epoch(epoch)
        set_mixup_epoch(mixup_fn, cfg, epoch)
        first_batch = in_epoch['batch'] if in_epoch and epoch == start_epoch else 0
        train_loader.resumable.start_epoch(epoch, first_batch)
        with out_of_memory_reported(cfg, device):
            train = train_one_epoch(train_model, train_loader, optimizer, loss_fn, device, epoch, mixup_fn=batch_mixup,
                                    amp_dtype=amp_dtype, scaler=scaler, ema=ema, limit_batches=cfg.limit_train_batches,
                                    log_interval=cfg.log_interval, is_main=info.is_main, distributed=info.distributed,
                                    log=log, grad_accum_steps=cfg.grad_accum_steps, run_clock=clock,
                                    start_batch=first_batch, sums=in_epoch['sums'] if first_batch else None,
                                    at_step=at_step, clip_grad=cfg.clip_grad, clip_mode=cfg.clip_mode,
                                    channels_last=cfg.channels_last)
        if train['skipped_steps']:
            log(f'epoch {epoch}: the float16 gradient scaler skipped {train["skipped_steps"]} of {train["steps"]} '
                f'optimizer steps (inf/NaN gradients; weights and EMA unchanged there), loss scale now '
                f'{scaler.get_scale():g}')
        if info.distributed:  # every rank evaluates (and rank 0 saves) the same BatchNorm statistics
            sync_bn_stats(model, cfg.dist_bn, info.world)
            if ema is not None:
                sync_bn_stats(ema.module, cfg.dist_bn, info.world)
        kwargs = dict(amp_dtype=eval_dtype, limit_batches=cfg.limit_eval_batches, distributed=info.distributed,
                      is_main=info.is_main, channels_last=cfg.channels_last)
        metrics = evaluate(eval_model, eval_loader, device, **kwargs)
        row = dict(epoch=epoch, train_loss=train['loss'], eval_loss=metrics['loss'], eval_top1=metrics['top1'],
                   eval_top5=metrics['top5'], lr=train['lr'])
        if ema is not None:
            ema_metrics = evaluate(ema.module, eval_loader, device, **kwargs)
            row.update(ema_eval_loss=ema_metrics['loss'], ema_eval_top1=ema_metrics['top1'],
                       ema_eval_top5=ema_metrics['top5'])
        scheduler.step(epoch + 1)
        is_best = best_metric is None or metrics['top1'] > best_metric
        if is_best:
            best_metric, best_epoch = metrics['top1'], epoch
        with fail_together(info):  # a failed write stops every process, with rank 0's message
            if info.is_main:
                rows.append(row)
                _write_summary(summary_path, rows, columns)
                state = make_checkpoint(model, optimizer, epoch, cfg, metrics['top1'], best_metric, best_epoch,
                                        scaler, ema, info.world, provenance)
                if run_changes:  # the run's record of its deliberate changes (utils.run.allow_change)
                    state['changes'] = run_changes
                if classes:  # an image folder's classes, checked at test.py (utils.data.folder_data)
                    state['class_names'] = classes
                save_run_checkpoint(cfg.output, state, is_best)
                keep_history(cfg.output, epoch, cfg.checkpoint_hist)
                if resume is not None and epoch == start_epoch:  # the config the checkpoints now train with
                    save_run_config(cfg)
                log.scalars({k: v for k, v in row.items() if k != 'epoch'}, epoch)
                if log_wandb is not None:
                    log_wandb({k: v for k, v in row.items() if k != 'epoch'}, epoch)
        stops.saved()
        last_metric = metrics['top1']
        clock.end_epoch(train['seconds'])
        log(f'epoch {epoch}: train loss {train["loss"]:.4f}, lr {train["lr"]:.3g}, {train["img_s"]:.1f} img/s | '
            f'eval loss {metrics["loss"]:.4f}, top-1 {metrics["top1"]:.2f}%, top-5 {metrics["top5"]:.2f}% | '
            f'best top-1 {best_metric:.2f}% (epoch {best_epoch}) | {format_duration(clock.elapsed())} elapsed, '
            f'{format_duration(clock.remaining_after(epoch))} remaining')
        if stops.signal is not None and epoch + 1 < num_epochs:  # it came during evaluation or the save
            stop(stops.signal, stop_line(stops.signal, epoch, None, None, last_path, info.world), log)
    if best_metric is not None:
        if not info.is_main or best_file_epoch(cfg.output) == best_epoch:
            files = f'summary.csv, {BEST}, last.pth.tar'
        else:  # only where a run folder was tampered with (or written by an older version): say so
            files = f'summary.csv, last.pth.tar; {BEST} does not hold epoch {best_epoch}'
        log(f'done: best top-1 {best_metric:.2f}% at epoch {best_epoch}; run folder {cfg.output} ({files})')
    log.close()
    return dict(best_top1=best_metric, best_epoch=best_epoch, output=cfg.output)


def load_trained_model(cfg: Config, checkpoint, device: torch.device) -> torch.nn.Module:
    """``cfg``'s model with the weights of ``checkpoint`` (``cfg.use_ema`` picks the EMA ones), on ``device``."""
    model = build_model(cfg)
    try:
        model.load_state_dict(checkpoint_filter_fn(checkpoint, model, use_ema=cfg.use_ema), strict=True)
    except CheckpointError as e:
        raise CheckpointError(f'{cfg.checkpoint}: {e}\nPass the config it was trained with (--config).') from None
    return model.to(device)


def evaluation_provenance(path: str, checkpoint, argv: Sequence[str], device) -> dict:
    """What a results file records about how it was made: the checkpoint's SHA-256, the provenance of the run that
    wrote it (``checkpoint['provenance']``, None for checkpoints that do not record one, e.g. the published ones)
    and this evaluation's own (``utils.run.provenance``)."""
    recorded = checkpoint.get('provenance') if isinstance(checkpoint, dict) else None
    return dict(checkpoint_sha256=file_sha256(path), checkpoint_provenance=recorded,
                provenance=run_provenance(argv, device))


def test_main(argv: Optional[Sequence[str]] = None, default_config: Optional[str] = None) -> dict:
    """Evaluate ``--checkpoint`` on the validation split; print, then write ``results.json`` into ``--output``.

    Without ``--config``, a checkpoint written by ``train_main`` brings its own config (architecture, data,
    normalisation), so ``test.py --checkpoint <run>/model_best.pth.tar`` needs nothing else; published checkpoints
    use the script's default config. Command-line keys override either. The output folder is checked before the
    evaluation, and the metrics are printed before they are written, so a failed write loses nothing.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(argv, default_config, help_keys=EVALUATION_KEYS + TEST_KEYS)
    if cfg.checkpoint is None:
        raise UserError('--checkpoint PATH is required: the .pth.tar file to evaluate (a run\'s model_best.pth.tar '
                        'or last.pth.tar, or a published checkpoint).')
    checkpoint = read_checkpoint(cfg.checkpoint, trust=cfg.trust_checkpoint)
    cfg = config_from_checkpoint(argv, checkpoint, evaluation=True) or cfg
    device = select_device(cfg)
    resolve_data_config(cfg)
    amp_dtype, _ = amp_setup(cfg, device)
    output = cfg.output or default_output(cfg, 'test')
    check_output_location(output)
    if cfg.results_file:
        check_results_file(cfg.results_file)
    loader = build_eval_loader(cfg, device=device)
    check_checkpoint_classes(checkpoint, loader.dataset, cfg.data_dir, cfg.checkpoint)  # before the shapes
    model = load_trained_model(cfg, checkpoint, device)
    started = time.perf_counter()
    metrics = evaluate(model, loader, device, amp_dtype=amp_dtype if cfg.eval_amp else None,
                       limit_batches=cfg.limit_eval_batches)
    seconds = time.perf_counter() - started
    results = dict(top1=metrics['top1'], top5=metrics['top5'], loss=metrics['loss'], samples=metrics['samples'],
                   checkpoint=cfg.checkpoint, use_ema=cfg.use_ema, model=cfg.model, dataset=dataset_label(cfg),
                   **evaluation_provenance(cfg.checkpoint, checkpoint, [sys.argv[0], *argv], device))
    print(f'{cfg.model} on {dataset_label(cfg)} ({metrics["samples"]} samples'
          f'{", EMA weights" if cfg.use_ema else ""}): '
          f'top-1 {metrics["top1"]:.2f}%, top-5 {metrics["top5"]:.2f}%, loss {metrics["loss"]:.4f}', flush=True)
    path = os.path.join(output, 'results.json')
    write_text(path, json.dumps(results, indent=2), 'The metrics printed above were not saved.')
    print(f'results: {path}')
    if cfg.results_file:  # timm's validate.py columns, the checkpoint's hash and the code's commit: one flat row
        row = {k: v for k, v in results.items() if k not in ('checkpoint_sha256', 'checkpoint_provenance', 'provenance')}
        append_row(cfg.results_file, dict(row, param_count=sum(p.numel() for p in model.parameters()),
                                          img_per_sec=metrics['samples'] / max(seconds, 1e-9),
                                          sha256=results['checkpoint_sha256'],
                                          commit=(results.get('provenance') or {}).get('git', {}).get('commit')))
        print(f'row added to {cfg.results_file}')
    return results


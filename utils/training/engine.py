"""One training epoch and one evaluation pass, the same for every data set.

Losses (as the published scripts): training with mixup uses timm's ``SoftTargetCrossEntropy`` on the mixed,
smoothed targets (it stays so after mixup is switched off, the targets then being smoothed one-hot), without mixup
timm's ``LabelSmoothingCrossEntropy``; evaluation uses plain cross-entropy. The model's neurons start from zero on
every call, so no ``reset_net`` is needed between batches.
"""
import contextlib
import sys
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.models import model_parameters
from timm.utils import dispatch_clip_grad, unwrap_model
from tqdm import tqdm

from utils.errors import DataError, NonFiniteLossError
from utils.training.progress import EpochMeter


def train_loss_fn(mixup_fn, smoothing: float) -> torch.nn.Module:
    if mixup_fn is not None:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else torch.nn.CrossEntropyLoss()


def _autocast(device: torch.device, amp_dtype: Optional[torch.dtype]):
    return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)


def _all_sum(values, device: torch.device, distributed: bool) -> list:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if distributed:
        dist.all_reduce(t)
    return t.tolist()


def _progress(loader, total: int, desc: str, show: bool, leave: bool = True):
    """A tqdm bar on rank 0 when stderr is a terminal; otherwise quiet. ``smoothing=0``: tqdm's rate and ETA are
    averages over the epoch so far, as the log lines' (``utils.training.progress``)."""
    return tqdm(loader, total=total, desc=desc, disable=not (show and sys.stderr.isatty()), dynamic_ncols=True,
                leave=leave, smoothing=0)


def _num_batches(loader, limit: Optional[int]) -> int:
    return len(loader) if limit is None else min(len(loader), limit)


def accumulation_group_size(batch: int, total: int, steps: int) -> int:
    """The number of batches in the accumulation group of batch ``batch`` (0-based) of an epoch of ``total``.

    As timm's ``train.py``: groups of ``steps`` batches, and a last, partial group of ``total % steps`` batches that
    still makes an optimizer step, its losses divided by its own size (so each step averages the loss over the
    images that went into it).
    """
    remainder = total % steps
    return remainder if remainder and batch >= total - remainder else steps


def optimizer_step(optimizer, scaler=None, clip_grad: Optional[float] = None, clip_mode: str = 'norm',
                   clip_parameters=None) -> bool:
    """One optimizer step, through the gradient scaler when there is one; returns whether the weights were updated.

    Gradient clipping (``clip_grad``, timm's ``dispatch_clip_grad`` with ``clip_mode`` norm, value or agc, on
    ``clip_parameters``) acts on the true gradients: under a scaler they are unscaled first (``scaler.unscale_``,
    which also records inf/NaN for the step; ``scaler.step`` then does not unscale again), as timm's
    ``NativeScaler`` does. It is called once per optimizer step, so with gradient accumulation it clips the summed
    gradients at the group's boundary.

    With a scaler (float16), ``scaler.step`` unscales the gradients (unless clipping unscaled
    them already) and skips the step when any is inf or NaN, and ``scaler.update`` then lowers the
    scale by its backoff factor. That is how a skipped step is detected: the scale went down. This is the scaler's
    normal working, not divergence (a run may skip a few steps at the start, while the scale falls from 2^16 to
    what its gradients allow), so it is counted, not stopped on: the NaN stop of :func:`train_one_epoch` looks at the
    loss. ``get_scale`` reads the scale back to the host; the loss is read every batch anyway, so this adds no
    synchronisation that matters.
    """
    if scaler is None:
        if clip_grad is not None:
            dispatch_clip_grad(clip_parameters, clip_grad, clip_mode)
        optimizer.step()
        return True
    scale = scaler.get_scale()
    if clip_grad is not None:
        scaler.unscale_(optimizer)
        dispatch_clip_grad(clip_parameters, clip_grad, clip_mode)
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale


def train_one_epoch(model, loader, optimizer, loss_fn, device: torch.device, epoch: int, *, mixup_fn=None,
                    amp_dtype: Optional[torch.dtype] = None, scaler=None, ema=None, limit_batches: Optional[int] = None,
                    log_interval: int = 50, is_main: bool = True, distributed: bool = False,
                    log: Callable[[str], None] = print, grad_accum_steps: int = 1, run_clock=None,
                    start_batch: int = 0, sums: Optional[dict] = None, at_step: Optional[Callable] = None,
                    clip_grad: Optional[float] = None, clip_mode: str = 'norm', channels_last: bool = False) -> dict:
    """Train one epoch; returns ``dict(loss, lr, samples, img_s, seconds, steps, skipped_steps)`` (loss averaged
    over all samples of all ranks).

    Gradient accumulation (``grad_accum_steps`` N > 1, timm's scheme): the gradients of N batches are summed, each
    loss divided by N (by the size of the last, partial group: :func:`accumulation_group_size`), and the optimizer,
    the gradient scaler and the EMA step once per group; under DDP the gradients are all-reduced only on a group's
    last batch (``no_sync`` before it). N = 1 is the plain step, unchanged. The learning rate schedule stays per
    epoch.

    A NaN or infinite loss on any rank stops every rank with :class:`NonFiniteLossError` before the optimizer step,
    so the last checkpoint written stays the last good one.

    float16 (``scaler``): a step the scaler skips (inf/NaN gradients, finite loss; :func:`optimizer_step`) leaves
    the weights as they were and does not update the EMA either. timm's loop updates the EMA after every step
    regardless; here the EMA averages the weights the optimizer produced, so a skipped step, which produced none,
    does not pull it once more towards unchanged weights (with its decay per update, it would otherwise count
    steps that did not happen). Under DDP every rank sees the same all-reduced gradients, hence skips the same
    steps. ``steps`` and ``skipped_steps`` in the result count the optimizer steps of the epoch and those skipped.

    Mid-epoch resume (``utils.training.preemption``): ``start_batch`` is the first batch to train (the loader then
    starts there, ``utils.data.resumable_data``) and ``sums`` the recorded ``loss_sum``, ``count``, ``steps`` and
    ``skipped`` of the batches before it; ``at_step(next_batch, sums)`` is called after every optimizer step with the
    same sums (it may save the state and stop the run).

    ``clip_grad``/``clip_mode``: :func:`optimizer_step` (for agc without the head, as timm). ``channels_last``:
    image batches are made channels-last (the model is, see ``utils.training.timm_flags.prepare_model``).
    """
    model.train()
    total = _num_batches(loader, limit_batches)
    lr = optimizer.param_groups[0]['lr']
    loss_sum, count, steps, skipped = 0.0, 0, 0, 0
    if sums is not None:
        loss_sum, count, steps, skipped = sums['loss_sum'], sums['count'], sums['steps'], sums['skipped']
    world = dist.get_world_size() if distributed else 1
    meter = EpochMeter(total - start_batch, epoch, world, run_clock, log_interval)  # the batches left to train
    clip_parameters = list(model_parameters(unwrap_model(model), exclude_head=clip_mode == 'agc')) \
        if clip_grad is not None else None
    bar = _progress(loader, total, f'epoch {epoch}', is_main)
    for i, (images, targets) in enumerate(bar, start=start_batch):
        if i >= total:
            break
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        group = accumulation_group_size(i, total, grad_accum_steps)
        last_of_group = (i + 1) % grad_accum_steps == 0 or i + 1 == total
        with model.no_sync() if hasattr(model, 'no_sync') and not last_of_group else contextlib.nullcontext():
            with _autocast(device, amp_dtype):
                loss = loss_fn(model(images), targets)
            value = loss.item()
            bad = _all_sum([float(value != value or abs(value) == float('inf'))], device, distributed)[0]
            if bad:
                raise NonFiniteLossError(
                    f'the training loss became {value} (NaN or infinite) at epoch {epoch}, batch {i}: training '
                    f'diverged.\nThe last good checkpoint (last.pth.tar of the run folder) is left in place. Lower '
                    f'--lr, or run without --amp (or with --amp-dtype bfloat16), then continue with --resume '
                    f'<run>/last.pth.tar.')
            if i % grad_accum_steps == 0:
                optimizer.zero_grad(set_to_none=True)
            if group > 1:
                loss = loss / group
            (scaler.scale(loss) if scaler is not None else loss).backward()
        if last_of_group:
            stepped = optimizer_step(optimizer, scaler, clip_grad, clip_mode, clip_parameters)
            steps += 1
            skipped += not stepped
            if ema is not None and stepped:
                ema.update(unwrap_model(model))  # without DDP's and torch.compile's wrappers
        loss_sum += value * images.shape[0]
        count += images.shape[0]
        meter.update(images.shape[0])
        if not bar.disable:
            bar.set_postfix(meter.postfix(loss_sum / count, lr), refresh=False)
        elif is_main and meter.log_due():
            log(meter.line(loss_sum / count, lr))
        if last_of_group and at_step is not None:
            at_step(i + 1, dict(loss_sum=loss_sum, count=count, steps=steps, skipped=skipped))
    bar.close()
    seconds = meter.elapsed
    loss_sum, count = _all_sum([loss_sum, count], device, distributed)
    if count == 0:
        raise DataError('the training set gave no batch: it has fewer samples than --batch-size (per process).')
    return dict(loss=loss_sum / count, lr=lr, samples=int(count), img_s=count / max(seconds, 1e-9), seconds=seconds,
                steps=steps, skipped_steps=skipped)


@torch.no_grad()
def evaluate(model, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             limit_batches: Optional[int] = None, distributed: bool = False, is_main: bool = True,
             channels_last: bool = False) -> dict:
    """``dict(top1, top5, loss, samples)``: accuracies in percent and the mean plain cross-entropy, summed over the
    batches of every rank (each rank evaluates its own shard) and divided once, so the numbers are exact."""
    model.eval()
    total = _num_batches(loader, limit_batches)
    loss_sum = correct1 = correct5 = count = 0.0
    for i, (images, targets) in enumerate(_progress(loader, total, 'eval', is_main, leave=False)):
        if i >= total:
            break
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp_dtype):
            output = model(images)
        output = output.float()
        loss_sum += F.cross_entropy(output, targets, reduction='sum').item()
        top = output.topk(min(5, output.shape[1]), dim=1).indices
        hits = top.eq(targets[:, None])
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += targets.shape[0]
    loss_sum, correct1, correct5, count = _all_sum([loss_sum, correct1, correct5, count], device, distributed)
    if count == 0:
        raise DataError('the evaluation set is empty.')
    return dict(top1=100.0 * correct1 / count, top5=100.0 * correct5 / count, loss=loss_sum / count,
                samples=int(count))

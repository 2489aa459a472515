"""One training epoch and one evaluation pass, the same for every data set.

Losses (as the published scripts): training with mixup uses timm's ``SoftTargetCrossEntropy`` on the mixed,
smoothed targets (it stays so after mixup is switched off, the targets then being smoothed one-hot), without mixup
timm's ``LabelSmoothingCrossEntropy``; evaluation uses plain cross-entropy. The model's neurons start from zero on
every call, so no ``reset_net`` is needed between batches.
"""
import sys
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from tqdm import tqdm

from .errors import DataError, NonFiniteLossError


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
    """A tqdm bar on rank 0 when stderr is a terminal; otherwise quiet."""
    return tqdm(loader, total=total, desc=desc, disable=not (show and sys.stderr.isatty()), dynamic_ncols=True,
                leave=leave)


def _num_batches(loader, limit: Optional[int]) -> int:
    return len(loader) if limit is None else min(len(loader), limit)


def train_one_epoch(model, loader, optimizer, loss_fn, device: torch.device, epoch: int, *, mixup_fn=None,
                    amp_dtype: Optional[torch.dtype] = None, scaler=None, ema=None, limit_batches: Optional[int] = None,
                    log_interval: int = 50, is_main: bool = True, distributed: bool = False,
                    log: Callable[[str], None] = print) -> dict:
    """Train one epoch; returns ``dict(loss, lr, samples, img_s)`` (loss averaged over all samples of all ranks).

    A NaN or infinite loss on any rank stops every rank with :class:`NonFiniteLossError` before the optimizer step,
    so the last checkpoint written stays the last good one.
    """
    model.train()
    total = _num_batches(loader, limit_batches)
    lr = optimizer.param_groups[0]['lr']
    loss_sum, count, start = 0.0, 0, time.time()
    bar = _progress(loader, total, f'epoch {epoch}', is_main)
    for i, (images, targets) in enumerate(bar):
        if i >= total:
            break
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        with _autocast(device, amp_dtype):
            loss = loss_fn(model(images), targets)
        value = loss.item()
        bad = _all_sum([float(value != value or abs(value) == float('inf'))], device, distributed)[0]
        if bad:
            raise NonFiniteLossError(
                f'the training loss became {value} (NaN or infinite) at epoch {epoch}, batch {i}: training diverged.\n'
                f'The last good checkpoint (last.pth.tar of the run folder) is left in place. Lower --lr, or run '
                f'without --amp (or with --amp-dtype bfloat16), then continue with --resume <run>/last.pth.tar.')
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update(model.module if hasattr(model, 'module') else model)
        loss_sum += value * images.shape[0]
        count += images.shape[0]
        img_s = count / max(time.time() - start, 1e-9)
        bar.set_postfix(loss=f'{loss_sum / count:.4f}', lr=f'{lr:.3g}', img_s=f'{img_s:.1f}', refresh=False)
        if bar.disable and is_main and log_interval and (i + 1) % log_interval == 0 and i + 1 < total:
            log(f'epoch {epoch} [{i + 1}/{total}] loss {loss_sum / count:.4f} lr {lr:.3g} {img_s:.1f} img/s')
    bar.close()
    loss_sum, count = _all_sum([loss_sum, count], device, distributed)
    if count == 0:
        raise DataError('the training set gave no batch: it has fewer samples than --batch-size (per process).')
    return dict(loss=loss_sum / count, lr=lr, samples=int(count), img_s=count / max(time.time() - start, 1e-9))


@torch.no_grad()
def evaluate(model, loader, device: torch.device, amp_dtype: Optional[torch.dtype] = None,
             limit_batches: Optional[int] = None, distributed: bool = False, is_main: bool = True) -> dict:
    """``dict(top1, top5, loss, samples)``: accuracies in percent and the mean plain cross-entropy, summed over the
    batches of every rank (each rank evaluates its own shard) and divided once, so the numbers are exact."""
    model.eval()
    total = _num_batches(loader, limit_batches)
    loss_sum = correct1 = correct5 = count = 0.0
    for i, (images, targets) in enumerate(_progress(loader, total, 'eval', is_main, leave=False)):
        if i >= total:
            break
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
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

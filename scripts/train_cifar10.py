#!/usr/bin/env python
"""Train gradloc's wide ResNet on CIFAR-10 (train split only), reproducibly.

Recipe: per-sample random crop (4-pixel reflect padding) and horizontal flip (optionally
cutout), SGD with
Nesterov momentum and weight decay, a one-cycle learning-rate schedule stepped per
batch, label smoothing. channels_last everywhere; CUDA when present, with bf16 autocast
there by default. On CPU bf16 is on by default only where the processor has native bf16
(AVX-512 BF16 or AMX, read from /proc/cpuinfo): there an epoch of WRN-16-4 took 5.7 minutes on
2 cores, while on an AVX2-only machine bf16 was 20x slower than fp32 (22 minutes an epoch).
Each epoch logs the accuracy on a fixed 2,000-image test subset (for monitoring only;
``scripts/eval_cifar10.py`` measures the full test split).

Every epoch writes ``<ckpt-dir>/last.pt`` atomically (model, optimiser, schedule, epoch,
log); within an epoch, every ``--save-every`` steps, ``progress.pt`` holds the same plus the
step, the running sums and the augmentation generator's state. A killed run rerun with
``--resume`` continues from the later of the two and loses at most ``--save-every`` steps.
The data order depends only on ``--seed`` and the epoch, so a resumed run sees the same
batches and augmentations. ``--export`` only ever reads ``last.pt`` (an epoch's end).

    python scripts/train_cifar10.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --ckpt-dir ~/.cache/gradloc-train --epochs 80 --cutout 16 --seed 10 --resume   # the shipped recipe
    python scripts/train_cifar10.py ... --export weights/wrn16-4_cifar10.pt   # after training

Photographs and "none of these" (``--photos``, ``--negatives``): each step adds ``--extra-batch``
photographs of the ten classes, image-level labels only (a fixed ``--photos-share`` of an
annotated set chosen by ``--split-seed``, see :func:`photo_sets.photo_split`; benchmarks
leave those images out), and as many negatives, photographs of none of the classes trained
towards the uniform distribution (outlier exposure, Hendrycks et al. 2019, weight ``--oe-weight``).
Both are shown as random resized crops (``--photo-scale``: smallest area share) at 32x32.

    python scripts/train_cifar10.py --init weights/wrn16-4_cifar10.pt --epochs 6 --lr 0.02 \
        --photos ../shared/data/tinyimagenet-cifar8-dev.tar.gz \
        --negatives ../shared/data/tinyimagenet-negatives.tar.gz --ckpt-dir ~/.cache/gradloc-train-oe --resume
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gradloc.data.cifar import load_cifar10  # noqa: E402
from gradloc.models.wrn import (CIFAR10_MEAN, CIFAR10_STD, WeightsError, WideResNet,  # noqa: E402
                           cpu_has_native_bf16, load_weights, sha256_of)


def cached_split(data: Path, split: str, cache: Path,
                 limit_per_class: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a split once and keep it as ``.npz`` beside the checkpoints."""
    if limit_per_class:  # smoke tests: a small subset, never cached
        x, y, _ = load_cifar10(data, split, limit_per_class)
        return torch.from_numpy(x), torch.from_numpy(y)
    f = cache / f"cifar10_{split}.npz"
    if f.is_file():
        z = np.load(f)
        return torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
    x, y, _ = load_cifar10(data, split)
    tmp = cache / f".cifar10_{split}.tmp.npz"
    np.savez(tmp, x=x, y=y)
    os.replace(tmp, f)
    return torch.from_numpy(x), torch.from_numpy(y)


def normalise(x_uint8_nhwc: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x = x_uint8_nhwc.permute(0, 3, 1, 2).float().div_(255)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4, cutout: int = 0) -> torch.Tensor:
    """Random crop with reflect padding and random horizontal flip, per sample. x: [B,3,H,W].

    ``cutout > 0`` then zeroes (the mean colour, as x is normalised) one ``cutout`` x ``cutout``
    square per sample whose centre is uniform over the image, so it may be clipped at the border
    (DeVries & Taylor 2017).
    """
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(b)[:, None, None, None], torch.arange(3)[None, :, None, None],
                 rows, cols]
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.where(flip[:, None, None, None], out.flip(3), out)
    if cutout > 0:  # drawn after the flip, so runs without cutout keep their exact augmentations
        cy = torch.randint(0, h, (b,), generator=gen)
        cx = torch.randint(0, w, (b,), generator=gen)
        top, left = cy - cutout // 2, cx - cutout // 2
        in_rows = (torch.arange(h)[None, :] >= top[:, None]) & (torch.arange(h)[None, :] < (top + cutout)[:, None])
        in_cols = (torch.arange(w)[None, :] >= left[:, None]) & (torch.arange(w)[None, :] < (left + cutout)[:, None])
        hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]
        out = out.masked_fill(hole, 0.0)
    return out.contiguous(memory_format=torch.channels_last)


def random_resized_crops(x: torch.Tensor, gen: torch.Generator, out: int = 32, min_area: float = 0.25,
                         ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Per sample, a random crop of ``min_area``-1 of the area and aspect in ``ratio``, resized to
    ``out`` x ``out`` (bilinear, one batched grid_sample), then a random horizontal flip.
    x: normalised ``[B, 3, H, W]``."""
    b = x.shape[0]
    area = min_area + (1 - min_area) * torch.rand(b, generator=gen)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    w = (area * logr.exp()).sqrt().clamp(max=1.0)  # shares of the side
    h = (area / logr.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(b, generator=gen) * (1 - w) + w / 2) * 2 - 1  # centre in [-1, 1]
    cy = (torch.rand(b, generator=gen) * (1 - h) + h / 2) * 2 - 1
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = w * flip, cx, h, cy
    grid = F.affine_grid(theta, (b, 3, out, out), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False).contiguous(memory_format=torch.channels_last)


EXTENT_IOU = (0.3, 0.8)  # a crop's target: uniform below the first IoU with the box, the class above the second


def box_iou_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of row ``i`` of ``a`` with row ``i`` of ``b`` (xyxy) -> ``[N]``."""
    lt, rb = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(1)
    area = lambda t: (t[:, 2:] - t[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter).clamp(min=1e-6)


def extent_crops(x: torch.Tensor, boxes: torch.Tensor, gen: torch.Generator, out: int = 32,
                 scale: tuple[float, float] = (0.5, 2.0), jitter: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """Per photograph ``x`` (normalised ``[B, 3, H, W]``) and its box (``[B, 4]`` xyxy pixels), a crop
    of the box scaled by a log-uniform factor in ``scale`` about its centre moved by up to
    ``jitter`` of its side, clipped to the photograph and squashed to ``out`` x ``out`` (as the
    pipeline cuts a candidate), randomly flipped. Returns the crops and each crop's IoU with the box."""
    b, _, h, w = x.shape
    s = torch.empty(b).uniform_(math.log(scale[0]), math.log(scale[1]), generator=gen).exp()
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2 + (torch.rand(b, generator=gen) * 2 - 1) * jitter * bw
    cy = (boxes[:, 1] + boxes[:, 3]) / 2 + (torch.rand(b, generator=gen) * 2 - 1) * jitter * bh
    crop = torch.stack([(cx - bw * s / 2).clamp(0, w - 1), (cy - bh * s / 2).clamp(0, h - 1),
                        (cx + bw * s / 2).clamp(1, w), (cy + bh * s / 2).clamp(1, h)], 1)
    crop[:, 2:] = torch.maximum(crop[:, 2:], crop[:, :2] + 1)
    flip = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)  # the crop in grid_sample's [-1, 1] coordinates
    theta[:, 0, 0] = (crop[:, 2] - crop[:, 0]) / w * flip
    theta[:, 0, 2] = (crop[:, 0] + crop[:, 2]) / w - 1
    theta[:, 1, 1] = (crop[:, 3] - crop[:, 1]) / h
    theta[:, 1, 2] = (crop[:, 1] + crop[:, 3]) / h - 1
    grid = F.affine_grid(theta, (b, 3, out, out), align_corners=False)
    views = F.grid_sample(x, grid, mode="bilinear", align_corners=False)
    return views.contiguous(memory_format=torch.channels_last), box_iou_rows(crop, boxes)


def extent_targets(labels: torch.Tensor, iou: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """``w * onehot + (1 - w) * uniform``, ``w`` rising linearly from 0 at IoU 0.3 to 1 at 0.8:
    a crop that is the object is the class, a crop mostly of its surroundings or of a part is not
    (R-CNN's positives and background, softened)."""
    lo, hi = EXTENT_IOU
    wgt = ((iou - lo) / (hi - lo)).clamp(0, 1)[:, None]
    return wgt * F.one_hot(labels, classes).float() + (1 - wgt) / classes


RANKED_SCALES = ((0.9, 1.1), (1.3, 2.0), (0.4, 0.7))  # the object, the object with surroundings, a part


def extent_ranking_loss(logits: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """``logits`` of three crops per photograph (its object, the object with surroundings, a
    part; :data:`RANKED_SCALES`, stacked in that order) -> the hinge loss asking the object's
    class logit to beat the other two crops' by ``margin``: the ranking the pipeline makes."""
    z = logits.view(3, -1, logits.shape[1]).gather(2, labels.view(1, -1, 1).expand(3, -1, 1))[..., 0]
    return (F.relu(margin - (z[0] - z[1])) + F.relu(margin - (z[0] - z[2]))).mean()


@torch.no_grad()
def evaluate(model, x, y, device, batch=1000, amp=True):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(xb).argmax(1).cpu()
        correct += (pred == y[i:i + batch]).sum().item()
    return correct / len(x)


def atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data/cifar10-jpeg.tar.gz"))
    p.add_argument("--ckpt-dir", type=Path, default=Path.home() / ".cache" / "gradloc-train")
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--width", type=int, default=4)
    p.add_argument("--epochs", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.15, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--cutout", type=int, default=0,
                   help="side of the square cut out of each training image (0: none; DeVries & Taylor used 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for CUDA and for CPUs with native bf16)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--init", type=Path, default=None,
                   help="start from these weights (an exported state dict) with a fresh schedule: "
                        "a second one-cycle from a trained model")
    p.add_argument("--resume", action="store_true", help="continue from <ckpt-dir>/last.pt")
    p.add_argument("--save-every", type=int, default=100,
                   help="steps between mid-epoch progress checkpoints (0: only at epoch ends)")
    p.add_argument("--stop-after", type=int, default=None,
                   help="exit after this many steps in this invocation, checkpointed (for time-boxed runs)")
    p.add_argument("--max-batches", type=int, default=None, help="stop each epoch early (smoke tests)")
    p.add_argument("--limit-per-class", type=int, default=None, help="train on a subset (smoke tests)")
    p.add_argument("--photos", type=Path, action="append", default=None,
                   help="annotated photographs (COCO folder or .tar.gz) trained on with image-level labels "
                        "(repeat for several sets)")
    p.add_argument("--photo-balance", action="store_true",
                   help="draw the photographs' classes equally often (default: as often as they occur)")
    p.add_argument("--photos-share", type=float, default=0.5, help="share of --photos trained on")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the --photos split")
    p.add_argument("--negatives", type=Path, default=None,
                   help="photographs of none of the classes (folder or .tar.gz): outlier exposure")
    p.add_argument("--extra-batch", type=int, default=32, help="photographs and negatives per step, each")
    p.add_argument("--oe-weight", type=float, default=0.5, help="weight of the outlier-exposure loss")
    p.add_argument("--photo-scale", type=float, default=0.25, help="smallest area share of a random resized crop")
    p.add_argument("--extent", type=Path, default=None,
                   help="annotated photographs (COCO folder or .tar.gz) with boxes: each step adds --extra-batch "
                        "crops around their boxes at 0.5-2x the box's side, trained towards the class as the crop's "
                        "IoU with the box rises (box-supervised; the --photos-share split, --split-seed)")
    p.add_argument("--extent-weight", type=float, default=1.0, help="weight of the --extent loss")
    p.add_argument("--extent-rank", type=float, default=0.0,
                   help="with --extent: also crop each photograph's object (0.9-1.1x its box), the object with "
                        "surroundings (1.3-2x) and a part (0.4-0.7x), and ask the object's class logit to beat the "
                        "other two by this margin (hinge loss; 0: off)")
    p.add_argument("--export", type=Path, default=None,
                   help="write the eval-mode state dict of the last checkpoint here (+ .sha256) and exit")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)
    last = args.ckpt_dir / "last.pt"
    progress = args.ckpt_dir / "progress.pt"  # mid-epoch state; belongs to the epoch after last.pt's
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = args.amp if args.amp is not None else (device.type == "cuda" or cpu_has_native_bf16())

    torch.manual_seed(args.seed)
    model = WideResNet(args.depth, args.width).to(device).to(memory_format=torch.channels_last)
    resuming = args.resume and (last.is_file() or progress.is_file())
    if args.init and not args.export and not resuming:  # a resumed run takes its weights from the checkpoint
        try:
            load_weights(model, args.init)  # checks its .sha256 when one lies beside it
        except WeightsError as err:
            sys.exit(f"error: cannot start from {args.init}: {err}")

    if args.export:
        if not last.is_file():
            sys.exit(f"error: no checkpoint to export: {last} does not exist (train first, or pass --ckpt-dir)")
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
        args.export.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(state, args.export)
        digest = sha256_of(args.export)
        args.export.with_name(args.export.name + ".sha256").write_text(f"{digest}  {args.export.name}\n")
        print(f"exported epoch {ckpt['epoch']} to {args.export} (sha256 {digest})")
        return 0

    x_train, y_train = cached_split(args.data, "train", args.ckpt_dir, args.limit_per_class)
    x_test, y_test = cached_split(args.data, "test", args.ckpt_dir, args.limit_per_class)
    monitor = torch.randperm(len(x_test), generator=torch.Generator().manual_seed(1))[:2000]
    test_inputs, y_test = normalise(x_test[monitor]), y_test[monitor]
    train_inputs = normalise(x_train)  # augmentation runs on normalised tensors
    photos = negatives = None
    if args.photos:
        from photo_sets import load_labelled_photos, photo_split
        xs, ys, listing = [], [], []
        for source in args.photos:  # each set split on its own, so --exclude works per benchmark
            px, py, names = load_labelled_photos(source)
            keep = photo_split(names, args.photos_share, args.split_seed)
            sel = torch.tensor([n in keep for n in names])
            listing.append(f"# {source}: the {len(keep)} photographs trained on (split seed {args.split_seed})\n"
                           + "".join(f"{n}\n" for n in sorted(keep)))
            xs.append(normalise(torch.from_numpy(px))[sel])
            ys.append(torch.from_numpy(py)[sel])
            print(f"photos: {int(sel.sum())} of {len(names)} from {source} (split seed {args.split_seed})", flush=True)
        (args.ckpt_dir / "photos_trained.txt").write_text("".join(listing), encoding="utf-8")
        photos = (torch.cat(xs), torch.cat(ys))
        # --photo-balance: each class drawn equally often (a class with few photographs, cat in
        # Tiny ImageNet, would otherwise be pulled towards its majority neighbour, dog)
        counts = torch.bincount(photos[1], minlength=10).clamp(min=1).float()
        photo_weights = (1.0 / counts)[photos[1]] if args.photo_balance else torch.ones(len(photos[1]))
    extent = None
    if args.extent:
        from photo_sets import load_boxed_photos, photo_split
        ex, ey, eb, names = load_boxed_photos(args.extent)
        keep = photo_split(names, args.photos_share, args.split_seed)
        sel = torch.tensor([n in keep for n in names])
        (args.ckpt_dir / "extent_trained.txt").write_text(
            f"# {args.extent}: the {len(keep)} boxed photographs trained on (split seed {args.split_seed})\n"
            + "".join(f"{n}\n" for n in sorted(keep)), encoding="utf-8")
        extent = (normalise(torch.from_numpy(ex))[sel], torch.from_numpy(ey)[sel], torch.from_numpy(eb)[sel])
        print(f"extent: {int(sel.sum())} of {len(names)} boxed photographs from {args.extent}", flush=True)
    if args.negatives:
        from photo_sets import load_photo_folder
        negatives = normalise(torch.from_numpy(load_photo_folder(args.negatives)))
        print(f"negatives: {len(negatives)} from {args.negatives}", flush=True)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    if args.max_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)

    decay, no_decay = [], []
    for name, prm in model.named_parameters():
        (no_decay if prm.ndim <= 1 else decay).append(prm)  # no decay on BN and biases
    opt = torch.optim.SGD([{"params": decay, "weight_decay": args.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=args.lr, momentum=args.momentum, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch,
        pct_start=0.25, div_factor=20, final_div_factor=200)
    start_epoch, start_step, running, log = 0, 0, None, []
    cfg = {k: [str(p) for p in v] if isinstance(v, list) else str(v) if isinstance(v, Path) else v
           for k, v in vars(args).items()}  # as saved, JSON-ready
    if resuming:
        ckpt = torch.load(last, map_location="cpu", weights_only=True) if last.is_file() else None
        if progress.is_file():
            mid = torch.load(progress, map_location="cpu", weights_only=True)
            if ckpt is None or mid["epoch"] == ckpt["epoch"]:  # else it is stale: an older epoch's
                ckpt = mid
        saved = json.loads(ckpt["config"])
        older = {"cutout": 0, "photos": None, "negatives": None, "photos_share": 0.5, "split_seed": 0,
                 "extra_batch": 32, "oe_weight": 0.5, "photo_scale": 0.25,
                 "photo_balance": False, "extent": None, "extent_weight": 1.0, "extent_rank": 0.0}  # checkpoints older than these had none
        changed = [k for k in ("epochs", "batch_size", "lr", "max_batches", "depth", "width", "limit_per_class",
                                 "init", "seed", *older)
                   if saved.get(k, older.get(k)) != cfg[k]]
        if changed:
            sys.exit(f"cannot resume {last}: it was trained with different "
                     + ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in changed))
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch, log = ckpt["epoch"], json.loads(ckpt["log"])
        if "step" in ckpt:
            start_step, running = ckpt["step"], ckpt["running"]
            print(f"resumed from {progress} at epoch {start_epoch + 1}, step {start_step}", flush=True)
        else:
            print(f"resumed from {last} after epoch {start_epoch}", flush=True)
    print(f"config {json.dumps(cfg)} device {device} threads {torch.get_num_threads()}", flush=True)

    def state(epoch: int) -> dict:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "log": json.dumps(log), "config": json.dumps(cfg)}

    steps_run = 0
    for epoch in range(start_epoch, args.epochs):
        model.train()
        gen = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        order = torch.randperm(len(x_train), generator=gen)
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        first_step = 0
        if running is not None:  # resuming mid-epoch: the generator state replays the same augmentations
            gen.set_state(running["generator"])
            first_step, seen, loss_sum, correct = start_step, running["seen"], running["loss_sum"], running["correct"]
            t0 -= running["seconds"]
            running = None
        for step in range(first_step, steps_per_epoch):
            if args.stop_after is not None and steps_run >= args.stop_after:
                print(f"stopped after {steps_run} steps (--stop-after), at epoch {epoch + 1} step {step}", flush=True)
                return 0
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            xb = augment(train_inputs[idx], gen, cutout=args.cutout)
            yb = y_train[idx]
            parts = [xb]
            if photos is not None:
                pick = torch.multinomial(photo_weights, args.extra_batch, replacement=True, generator=gen)
                parts.append(random_resized_crops(photos[0][pick], gen, min_area=args.photo_scale))
                yb = torch.cat([yb, photos[1][pick]])
            if extent is not None:
                pick = torch.randint(0, len(extent[1]), (args.extra_batch,), generator=gen)
                views, iou = extent_crops(extent[0][pick], extent[2][pick], gen)
                parts.append(views)
                soft = extent_targets(extent[1][pick], iou).to(device)
                extent_labels = extent[1][pick].to(device)
                if args.extent_rank > 0:
                    ranked = [extent_crops(extent[0][pick], extent[2][pick], gen, scale=s, jitter=0.05)[0]
                              for s in RANKED_SCALES]
                    parts += ranked
            if negatives is not None:
                pick = torch.randint(0, len(negatives), (args.extra_batch,), generator=gen)
                parts.append(random_resized_crops(negatives[pick], gen, min_area=args.photo_scale))
            xb = torch.cat(parts).to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out_all = model(xb).float()
                out = out_all[:len(yb)]
                loss = F.cross_entropy(out, yb, label_smoothing=args.label_smoothing)
                rest = out_all[len(yb):]
                if extent is not None:  # cross-entropy to each crop's soft target
                    mine, rest = rest[:args.extra_batch], rest[args.extra_batch:]
                    loss = loss - args.extent_weight * (soft * mine.log_softmax(1)).sum(1).mean()
                    if args.extent_rank > 0:
                        trio, rest = rest[:3 * args.extra_batch], rest[3 * args.extra_batch:]
                        loss = loss + extent_ranking_loss(trio, extent_labels, args.extent_rank)
                if negatives is not None:  # cross-entropy to the uniform distribution
                    loss = loss - args.oe_weight * rest.log_softmax(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(yb)
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            steps_run += 1
            done = step + 1
            if done < steps_per_epoch and ((args.save_every and done % args.save_every == 0)
                                           or steps_run == args.stop_after):
                atomic_save({**state(epoch), "step": done, "running": {
                    "generator": gen.get_state(), "seen": seen, "loss_sum": loss_sum, "correct": correct,
                    "seconds": time.time() - t0}}, progress)
        test_acc = evaluate(model, test_inputs, y_test, device, amp=amp)
        entry = {"epoch": epoch + 1, "train_loss": round(loss_sum / seen, 4),
                 "train_acc": round(correct / seen, 4), "test2k_acc": round(test_acc, 4),
                 "lr": round(sched.get_last_lr()[0], 5), "seconds": round(time.time() - t0, 1)}
        log.append(entry)
        print(json.dumps(entry), flush=True)
        atomic_save(state(epoch + 1), last)
        progress.unlink(missing_ok=True)
    print(f"done: {args.epochs} epochs, total {sum(e['seconds'] for e in log) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

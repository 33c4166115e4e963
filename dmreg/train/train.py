"""Train DistillMatch: ``python -m dmreg.train.train --out weights/NAME --steps N``.

One entry point that later training work extends: data (real band pairs plus simulated
modalities, held-out scenes never used), the teacher (a DINOv2/DINOv3 file the user
names, the XFeat stand-in, or none), the four losses, and a weight file whose card says
what data, teacher, steps and hardware made it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from dmreg.matchers.distillmatch.config import DistillMatchConfig
from dmreg.matchers.base import MODALITIES
from dmreg.matchers.distillmatch.model import COARSE_STRIDE, DistillMatch, cell_validity
from dmreg.matchers.distillmatch.weights import load_model, save_weights
from dmreg.train.catalogue import ORIGINS, catalogue
from dmreg.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from dmreg.train.data import PairDataset
from dmreg.train.homography import HomographyRange
from dmreg.train.modalities import PSEUDO_INFRARED, simulations, with_modalities
from dmreg.train.provenance import commit, hardware
from dmreg.train.split import HELD_OUT_SCENES
from dmreg.train.losses import (coarse_ground_truth, coarse_loss, distillation_loss, fine_loss, modality_loss,
                                warp_features)

REPO = Path(__file__).resolve().parents[2]


def build_teacher(name: str, weights: str | None) -> torch.nn.Module | None:
    if name == "none":
        return None
    if name == "xfeat":
        from dmreg.train.xfeat_teacher import XFeatTeacher

        return XFeatTeacher()
    from dmreg.matchers.distillmatch.teacher import load_teacher

    if not weights:
        raise SystemExit(f"--teacher {name} needs --teacher-weights FILE (official .pth or timm .safetensors)")
    return load_teacher(name, weights)


OPTICAL = MODALITIES.index("optical")


def teacher_targets(teacher: torch.nn.Module, batch: dict, grid: tuple[int, int]) -> tuple[Tensor, tuple, tuple]:
    """The teacher's view of each pair's OPTICAL image, as a target in both images' frames.

    The teacher is a model of visible imagery: it sees the image whose label is optical
    (image0 when both are), never a SAR, infrared or map image, whatever order the data
    gives the pair in. Its feature map is then resampled onto each image's coarse grid
    through the pair's homography, so the same ground gets the same target in both.
    Returns (pairs with an optical image [B] bool, (target0, valid0), (target1, valid1))
    for those pairs; pairs without an optical image get no target.
    """
    sees1 = (batch["modality1"] == OPTICAL) & (batch["modality0"] != OPTICAL)
    has = (batch["modality0"] == OPTICAL) | sees1
    view = teacher(torch.where(sees1[:, None, None, None], batch["image1"], batch["image0"])[has])
    h_0to1, sees1 = batch["H_0to1"][has], sees1[has, None, None]
    identity = torch.eye(3, device=view.device).expand(len(view), 3, 3)
    to0 = torch.where(sees1, torch.linalg.inv(h_0to1), identity)
    to1 = torch.where(sees1, identity, h_0to1)
    return has, warp_features(view, to0, grid, teacher.patch_size), warp_features(view, to1, grid, teacher.patch_size)


def training_step(model: DistillMatch, teacher: torch.nn.Module | None, batch: dict, weights: dict[str, float],
                  use_labels: bool) -> dict[str, torch.Tensor]:
    """All losses for one batch; 'total' is what is minimised. Pairs whose layers are
    aligned only to a few pixels (``exact`` false) train the coarse level only."""
    data = {k: batch[k] for k in ("image0", "image1", "valid0", "valid1")}
    if use_labels:  # train the injection both from given labels and from predictions
        data["modality0"], data["modality1"] = batch["modality0"], batch["modality1"]
    out = model(data, match=False)
    grid = out["coarse0"].shape[-2:]
    gt = coarse_ground_truth(batch["H_0to1"], batch["valid0"], batch["valid1"], grid)
    exact = batch["exact"][gt[0]] if "exact" in batch else slice(None)
    losses = {
        "coarse": coarse_loss(out["log_conf"], gt),
        "fine": fine_loss(model, out, batch["H_0to1"], tuple(t[exact] for t in gt)),
        "modality": modality_loss(out["modality_logits0"], batch["modality0"])
        + modality_loss(out["modality_logits1"], batch["modality1"]),
    }
    if teacher is not None:
        has, (target0, seen0), (target1, seen1) = teacher_targets(teacher, batch, grid)
        cells0 = cell_validity(batch["valid0"][has], *grid).view(-1, *grid)
        cells1 = cell_validity(batch["valid1"][has], *grid).view(-1, *grid)
        losses["distill"] = (distillation_loss(model.project(out["coarse0"][has]), target0, seen0 & cells0)
                             + distillation_loss(model.project(out["coarse1"][has]), target1, seen1 & cells1))
    losses["total"] = sum(weights.get(k, 1.0) * v for k, v in losses.items())
    return losses


RESUME_KEYS = ("steps", "batch", "size", "seed", "simulate_prob", "teacher", "data", "pseudo_infrared", "max_angle")
"""Arguments a resumed run must share with the run that wrote the checkpoint: they decide
which pairs step i sees."""


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="weights path stem (writes .safetensors and .json)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=256, help="crop size (multiple of 8)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--init", default=None, help="start from these DistillMatch weights (name or path)")
    ap.add_argument("--teacher", default="xfeat", help="none, xfeat, or a DINO teacher name (see teacher.TEACHERS)")
    ap.add_argument("--teacher-weights", default=None)
    ap.add_argument("--examples-dir", default=str(REPO / "examples" / "data"))
    ap.add_argument("--bench-data-dir", default=str(REPO / "benchmarks" / "data"))
    ap.add_argument("--data", default=None,
                    help="a folder of real multimodal pairs laid out as ../shared/data (see dmreg.train.catalogue)")
    ap.add_argument("--simulate-prob", type=float, default=0.5,
                    help="share of pairs with a simulated modality (real cross-modal pairs are scarce)")
    ap.add_argument("--pseudo-infrared", choices=PSEUDO_INFRARED, default="hand",
                    help="how simulated infrared/thermal images are made: the hand tone model, the V2I-GAN, "
                         "or either at random")
    ap.add_argument("--max-angle", type=float, default=30.0, help="largest rotation of a training pair (degrees)")
    ap.add_argument("--weight-fine", type=float, default=0.5)
    ap.add_argument("--weight-modality", type=float, default=0.1)
    ap.add_argument("--weight-distill", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=250,
                    help="write the weights and a checkpoint every N steps; a rerun of the same command resumes")
    args = ap.parse_args(argv)

    args.commit = commit()  # the code that starts the run: later commits do not change what it runs
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher = build_teacher(args.teacher, args.teacher_weights)
    if args.init:
        model, init_card = load_model(args.init)
        model = with_modalities(model, MODALITIES).to(device).train()
    else:
        conf = DistillMatchConfig(teacher_dim=teacher.dim if teacher is not None else DistillMatchConfig.teacher_dim,
                                  n_modalities=len(MODALITIES), modalities=MODALITIES)
        model, init_card = DistillMatch(conf).to(device).train(), None
    args.init_from = {"name": init_card.name, "sha256": init_card.sha256,
                      "steps": init_card.provenance.get("steps")} if init_card else None
    if teacher is not None:
        teacher.to(device)
    sources = catalogue(args.examples_dir, args.bench_data_dir, args.data)
    dataset = PairDataset(sources, crop_size=args.size, length=args.steps * args.batch, seed=args.seed,
                          simulate_prob=args.simulate_prob, simulations=simulations(args.pseudo_infrared),
                          warp=HomographyRange(max_angle_deg=args.max_angle))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 5%
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / args.steps))))
    weights = {"fine": args.weight_fine, "modality": args.weight_modality, "distill": args.weight_distill}

    run = {k: getattr(args, k) for k in RESUME_KEYS}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_path(args.out)
    log, done, elapsed = [], 0, 0.0
    if (ckpt := load_checkpoint(ckpt_path)) is not None:
        if ckpt["run"] != run:
            raise SystemExit(f"{ckpt_path} was written by another run ({ckpt['run']}); "
                             f"delete it or use another --out")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        log, done, elapsed = ckpt["log"], ckpt["step"], ckpt["train_time_s"]
        print(f"resuming {ckpt_path} at step {done}", flush=True)
    # item i of the dataset is a pure function of (seed, i): a resumed run sees the same pairs
    remaining = torch.utils.data.Subset(dataset, range(done * args.batch, len(dataset)))
    loader = DataLoader(remaining, batch_size=args.batch, shuffle=False, num_workers=0, collate_fn=_collate)

    start, running = time.perf_counter() - elapsed, {}
    for step, batch in enumerate(loader, start=done + 1):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        losses = training_step(model, teacher, batch, weights, use_labels=step % 2 == 0)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + float(v.detach())
        if step % args.log_every == 0 or step == args.steps:
            entry = {"step": step, "time_s": round(time.perf_counter() - start, 1),
                     **{k: round(v / args.log_every, 4) for k, v in running.items()}}
            log.append(entry)
            print(json.dumps(entry), flush=True)
            running = {}
        if step % args.save_every == 0 or step == args.steps:
            _save(model, args, dataset, device, step, log, start)
            save_checkpoint(ckpt_path, {"run": run, "step": step, "log": log, "model": model.state_dict(),
                                        "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                                        "train_time_s": time.perf_counter() - start})


def _save(model: DistillMatch, args: argparse.Namespace, dataset: PairDataset, device: torch.device, step: int,
          log: list[dict], start: float) -> None:
    """Write the weights and their card; training resumes in train mode on its device."""
    provenance = {
        "teacher": args.teacher if args.teacher != "none" else "none (no distillation)",
        "teacher_weights": Path(args.teacher_weights).name if args.teacher_weights else None,
        "initialised_from": args.init_from,
        "data": sorted(dataset.scenes),
        "data_sources": {c: ORIGINS[c] for c in dataset.collections},
        "held_out_scenes": list(HELD_OUT_SCENES),
        "validation_split": "dmreg/train/split.py",
        "steps": step, "batch": args.batch, "crop": args.size, "simulate_prob": args.simulate_prob,
        "pseudo_infrared": args.pseudo_infrared, "max_angle_deg": args.max_angle, "lr": args.lr, "seed": args.seed,
        "hardware": hardware(device),
        "train_time_s": round(time.perf_counter() - start, 1),
        "dmreg_commit": args.commit,
        "final_losses": log[-1] if log else None,
        "coarse_stride": COARSE_STRIDE,
    }
    card = save_weights(model.eval(), args.out, provenance)
    model.train()
    (card.tensors.parent / f"{card.name}.trainlog").write_text(json.dumps(log, indent=1) + "\n", encoding="utf-8")
    print(f"step {step}: wrote {card.tensors} (sha256 {card.sha256[:12]})", flush=True)


def _collate(items: list[dict]) -> dict:
    out = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0] if k != "scene"}
    out["scene"] = [it["scene"] for it in items]
    return out


if __name__ == "__main__":
    main()

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
import platform
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from dmreg.matchers.distillmatch.config import DistillMatchConfig
from dmreg.matchers.distillmatch.model import COARSE_STRIDE, DistillMatch
from dmreg.matchers.distillmatch.weights import load_model, save_weights
from dmreg.train.data import HELD_OUT_SCENES, PairDataset, catalogue
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


def training_step(model: DistillMatch, teacher: torch.nn.Module | None, batch: dict, weights: dict[str, float],
                  use_labels: bool) -> dict[str, torch.Tensor]:
    """All losses for one batch; 'total' is what is minimised."""
    data = {k: batch[k] for k in ("image0", "image1", "valid0", "valid1")}
    if use_labels:  # train the injection both from given labels and from predictions
        data["modality0"], data["modality1"] = batch["modality0"], batch["modality1"]
    out = model(data, match=False)
    grid = out["coarse0"].shape[-2:]
    gt = coarse_ground_truth(batch["H_0to1"], batch["valid0"], batch["valid1"], grid)
    losses = {
        "coarse": coarse_loss(out["log_conf"], gt),
        "fine": fine_loss(model, out, batch["H_0to1"], gt),
        "modality": modality_loss(out["modality_logits0"], batch["modality0"])
        + modality_loss(out["modality_logits1"], batch["modality1"]),
    }
    if teacher is not None:
        teacher_view = teacher(batch["image0"])
        identity = torch.eye(3, device=teacher_view.device).expand(len(teacher_view), 3, 3)
        target0, valid0 = warp_features(teacher_view, identity, grid, teacher.patch_size)
        target1, valid1 = warp_features(teacher_view, batch["H_0to1"], grid, teacher.patch_size)
        losses["distill"] = (distillation_loss(model.project(out["coarse0"]), target0, valid0)
                             + distillation_loss(model.project(out["coarse1"]), target1, valid1))
    losses["total"] = sum(weights.get(k, 1.0) * v for k, v in losses.items())
    return losses


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
    ap.add_argument("--simulate-prob", type=float, default=0.5,
                    help="share of pairs with a simulated modality (real cross-modal pairs are scarce)")
    ap.add_argument("--weight-fine", type=float, default=0.5)
    ap.add_argument("--weight-modality", type=float, default=0.1)
    ap.add_argument("--weight-distill", type=float, default=1.0)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--save-every", type=int, default=250, help="also write the weights every N steps")
    args = ap.parse_args(argv)

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    teacher = build_teacher(args.teacher, args.teacher_weights)
    if args.init:
        model, init_card = load_model(args.init)
        model = model.to(device).train()
    else:
        conf = DistillMatchConfig(teacher_dim=teacher.dim if teacher is not None else DistillMatchConfig.teacher_dim)
        model, init_card = DistillMatch(conf).to(device).train(), None
    args.init_from = {"name": init_card.name, "sha256": init_card.sha256,
                      "steps": init_card.provenance.get("steps")} if init_card else None
    if teacher is not None:
        teacher.to(device)
    sources = catalogue(args.examples_dir, args.bench_data_dir)
    dataset = PairDataset(sources, crop_size=args.size, length=args.steps * args.batch, seed=args.seed,
                          simulate_prob=args.simulate_prob)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=False, num_workers=0,
                        collate_fn=_collate)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    warmup = max(1, args.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(  # linear warm-up, then cosine decay to 5%
        optimizer, lambda i: min(1.0, (i + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * i / args.steps))))
    weights = {"fine": args.weight_fine, "modality": args.weight_modality, "distill": args.weight_distill}

    log, start, running = [], time.perf_counter(), {}
    for step, batch in enumerate(loader, start=1):
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


def _save(model: DistillMatch, args: argparse.Namespace, dataset: PairDataset, device: torch.device, step: int,
          log: list[dict], start: float) -> None:
    """Write the weights and their card; training resumes in train mode on its device."""
    provenance = {
        "teacher": args.teacher if args.teacher != "none" else "none (no distillation)",
        "teacher_weights": Path(args.teacher_weights).name if args.teacher_weights else None,
        "initialised_from": args.init_from,
        "data": sorted(dataset.scenes),
        "held_out_scenes": list(HELD_OUT_SCENES),
        "steps": step, "batch": args.batch, "crop": args.size, "simulate_prob": args.simulate_prob, "lr": args.lr, "seed": args.seed,
        "hardware": _hardware(device),
        "train_time_s": round(time.perf_counter() - start, 1),
        "dmreg_commit": _commit(),
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


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()

"""Train the V2I-GAN: ``python -m dmreg.train.v2igan --data ../shared/data --out PATH --steps N``.

One run: real visible/infrared crops (data.py; the validation pairs of dmreg.train.split
never train), the pix2pix step (discriminator, then generator with LSGAN + L1 +
structure), Adam. Every ``--save-every`` steps the whole state goes to ``PATH.ckpt.pt``
(both networks, both optimisers, step, torch RNG, loss history; tensors and plain types
only, read back with ``weights_only=True``); a run started again with the same ``--out``
resumes there, and batch ``step`` is a pure function of (seed, step), so a stopped and
restarted run sees the same data as one that ran through. Losses go to stdout and
``PATH.log.jsonl`` as JSON lines.

At the end: ``PATH.safetensors`` + ``PATH.json`` (the generator and its card), and
``PATH.samples.png``; the card holds validation numbers on the held-out TNO pairs (L1 and
the gradient-structure similarity of the generated thermal against the real one), measured
in the same run on the same crops for ``dmreg.train.simulate.pseudo_infrared`` and for the
visible image itself (and inverted), so it says whether the GAN is the closer of them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from dmreg.train.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from dmreg.train.provenance import commit, hardware
from dmreg.train.simulate import pseudo_infrared
from dmreg.train.split import HELD_OUT_SCENES, TNO_VALIDATION_PAIRS, VALIDATION_ONLY
from dmreg.train.v2igan.data import Crop, PairCrops, catalogue, fixed_crops, full_pair, provenance, split
from dmreg.train.v2igan.losses import (lsgan_discriminator_loss, lsgan_generator_loss, masked_l1, patch_weights,
                                       structure_loss, structure_similarity)
from dmreg.train.v2igan.model import (KINDS, RECEPTIVE_FIELD, PatchDiscriminator, V2IConfig, V2IGenerator,
                                      count_parameters)
from dmreg.train.v2igan.weights import generate, save_generator
from dmreg.weightfiles import write_atomic

REPO = Path(__file__).resolve().parents[3]
CKPT_FORMAT = "dmreg.v2igan.ckpt/1"
DECAY_SHARE = 0.3
"""The learning rate is constant, then falls linearly to 10 % over this last share of the
steps (pix2pix decays to 0 over the second half; a short run keeps more of its full rate)."""


def training_step(generator: V2IGenerator, discriminator: PatchDiscriminator, opt_g: torch.optim.Optimizer,
                  opt_d: torch.optim.Optimizer, batch: dict[str, torch.Tensor],
                  weights: dict[str, float]) -> dict[str, float]:
    """One pix2pix step: the discriminator on real and (detached) generated infrared,
    then the generator against the updated discriminator. Returns the loss values."""
    vis, real, valid, kind = batch["visible"], batch["infrared"], batch["valid"], batch["kind"]
    fake = generator(vis, kind)

    discriminator.requires_grad_(True)
    real_scores = discriminator(vis, real, kind)
    fake_scores = discriminator(vis, fake.detach(), kind)
    w = patch_weights(valid, real_scores.shape)
    loss_d = lsgan_discriminator_loss(real_scores, fake_scores, w)
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()

    discriminator.requires_grad_(False)  # the generator's gradient flows through D, D's own is not needed
    adv = lsgan_generator_loss(discriminator(vis, fake, kind), w)
    l1 = masked_l1(fake, real, valid)
    struct = structure_loss(fake, real, valid)
    loss_g = weights["adversarial"] * adv + weights["l1"] * l1 + weights["structure"] * struct
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    discriminator.requires_grad_(True)
    return {"d": loss_d.item(), "g_adv": adv.item(), "l1": l1.item(), "structure": struct.item(),
            "g_total": loss_g.item()}


def learning_rate(step: int, steps: int, lr: float) -> float:
    decay_start = steps * (1.0 - DECAY_SHARE)
    if step <= decay_start:
        return lr
    return lr * (1.0 - 0.9 * (step - decay_start) / max(steps - decay_start, 1.0))


def _metrics(pred: np.ndarray, real: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    """(L1, gradient-structure similarity) of one prediction against the real infrared."""
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
    v = torch.from_numpy(valid)[None, None]
    return float(masked_l1(t(pred), t(real), v)), float(structure_similarity(t(pred), t(real), v))


METHODS = ("v2igan", "pseudo_infrared", "identity", "inverted")
"""What the validation compares: the generator; the hand simulation; the visible image
itself (what a matcher sees without any simulation); and its negative (a polarity-only
baseline, for thermal where warm objects are often dark in the visible)."""


def predictions(generator: V2IGenerator, crop: Crop, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every method's rendering of ``crop.visible`` as ``crop.kind``."""
    return {
        "v2igan": generate(generator, crop.visible, crop.kind),
        "pseudo_infrared": pseudo_infrared(crop.visible, rng),
        "identity": crop.visible,
        "inverted": 1.0 - crop.visible,
    }


def evaluate(generator: V2IGenerator, crops: Sequence[Crop], seed: int = 0) -> dict[str, dict] | None:
    """Mean L1 (lower is closer) and structure similarity (higher) per method, with the
    number of crops; pseudo_infrared draws from a seeded generator per crop."""
    if not crops:
        return None
    sums = {m: np.zeros(2) for m in METHODS}
    generator.eval()
    for i, crop in enumerate(crops):
        for method, pred in predictions(generator, crop, np.random.default_rng([seed, i])).items():
            sums[method] += _metrics(pred, crop.infrared, crop.valid)
    generator.train()
    return {m: {"l1": round(float(s[0]) / len(crops), 4), "structure": round(float(s[1]) / len(crops), 4),
                "n": len(crops)}
            for m, s in sums.items()}


def _verdict(metrics: dict | None) -> dict | None:
    if not metrics:
        return None
    gan = metrics["v2igan"]
    return {f"{k}_vs_{m}": bool(gan[k] < metrics[m][k] if k == "l1" else gan[k] > metrics[m][k])
            for m in METHODS[1:] for k in ("l1", "structure")}


def _tile(img: np.ndarray, label: str, size: int) -> np.ndarray:
    """One grey picture cell (grey keeps the PNG a third of a colour one), labelled
    white on a black outline."""
    tile = cv2.resize((np.clip(img, 0, 1) * 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
    if label:
        cv2.putText(tile, label, (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 0, 3, cv2.LINE_AA)
        cv2.putText(tile, label, (3, size - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.35, 255, 1, cv2.LINE_AA)
    return tile


def sample_picture(generator: V2IGenerator, rows: Sequence[tuple[Crop, str]], path: Path, seed: int = 0) -> None:
    """A grid: per row a crop's visible, its real infrared, the generator's thermal, NIR
    and SWIR, and pseudo_infrared; ``rows`` pairs each crop with a tag (val/train)."""
    size = 160
    header = ["visible", "real infrared", "GAN thermal", "GAN nir", "GAN swir", "pseudo_infrared"]
    lines = [np.full((24, size * len(header)), 255, np.uint8)]
    for j, h in enumerate(header):
        cv2.putText(lines[0], h, (j * size + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.45, 0, 1, cv2.LINE_AA)
    generator.eval()
    for i, (crop, tag) in enumerate(rows):
        gan = {k: generate(generator, crop.visible, k) for k in ("thermal", "nir", "swir")}
        pseudo = pseudo_infrared(crop.visible, np.random.default_rng([seed, i]))
        tiles = [_tile(crop.visible, f"{tag} {crop.name.split(':')[0][:14]}", size),
                 _tile(crop.infrared, f"real {crop.kind}", size),
                 _tile(gan["thermal"], "", size), _tile(gan["nir"], "", size), _tile(gan["swir"], "", size),
                 _tile(pseudo, "", size)]
        lines.append(np.hstack(tiles))
    generator.train()
    ok, png = cv2.imencode(".png", np.vstack(lines))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    write_atomic(path, png.tobytes())


def _run_settings(args: argparse.Namespace) -> dict:
    """What a resumed run must share with the one it continues (--steps may change)."""
    return {"batch": args.batch, "size": args.size, "seed": args.seed, "lr": args.lr, "beta1": args.beta1,
            "weights": _loss_weights(args), "data": args.data is not None}


def _loss_weights(args: argparse.Namespace) -> dict[str, float]:
    return {"adversarial": args.weight_adv, "l1": args.weight_l1, "structure": args.weight_structure}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m dmreg.train.v2igan", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="weights path stem (writes .safetensors, .json, .samples.png, "
                                                 ".ckpt.pt, .log.jsonl)")
    ap.add_argument("--data", default=None, help="the shared data folder (rstoolbox_landsat5, tno_cddfuse); "
                                                 "without it only examples/data trains and nothing validates")
    ap.add_argument("--examples-dir", default=str(REPO / "examples" / "data"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=128, help="crop size (a multiple of the generator stride)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (pix2pix: 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--weight-adv", type=float, default=1.0)
    ap.add_argument("--weight-l1", type=float, default=50.0)
    ap.add_argument("--weight-structure", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=V2IConfig.width)
    ap.add_argument("--levels", type=int, default=V2IConfig.levels)
    ap.add_argument("--disc-width", type=int, default=V2IConfig.disc_width)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    ap.add_argument("--val-crops", type=int, default=8, help="fixed crops per validation pair")
    args = ap.parse_args(argv)
    stride = 2 ** args.levels
    if args.size % stride or args.size < stride:
        ap.error(f"--size must be a multiple of the generator stride {stride}")
    if args.steps < 0 or args.batch < 1 or args.save_every < 1 or args.log_every < 1:
        ap.error("--steps must be >= 0; --batch, --save-every, --log-every >= 1")
    return args


def run(argv: list[str] | None = None) -> dict:
    """Train (or resume, or only finish) and write the outputs; returns a summary with
    ``resumed_from`` (the step the run started at) and ``step``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt_path = checkpoint_path(out)
    log_path = out.with_name(out.name + ".log.jsonl")

    sources = catalogue(args.examples_dir, args.data)
    train_sources, val_sources = split(sources)
    data = PairCrops(train_sources, args.size, seed=args.seed)
    conf = V2IConfig(width=args.width, levels=args.levels, disc_width=args.disc_width)
    generator, discriminator = V2IGenerator(conf).train(), PatchDiscriminator(conf).train()
    opt_g = torch.optim.Adam(generator.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=(args.beta1, 0.999))
    settings = _run_settings(args)
    start_step, history, train_time = 0, [], 0.0
    if (ckpt := load_checkpoint(ckpt_path)) is not None:
        if ckpt.get("format") != CKPT_FORMAT or ckpt["config"] != conf.to_dict() or ckpt["settings"] != settings:
            raise SystemExit(f"{ckpt_path} is from a run with other settings ({ckpt.get('config')}, "
                             f"{ckpt.get('settings')}); pass the same options or another --out")
        generator.load_state_dict(ckpt["generator"])
        discriminator.load_state_dict(ckpt["discriminator"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        torch.set_rng_state(ckpt["torch_rng"])
        start_step, history, train_time = ckpt["step"], ckpt["history"], ckpt["train_time_s"]
        print(json.dumps({"resumed_from": start_step, "checkpoint": str(ckpt_path)}), flush=True)
    # the log holds what the checkpoint holds: lines written after the last checkpoint of a
    # stopped run (or by an older run of this --out) would otherwise be repeated or mixed in
    log_path.write_text("".join(json.dumps(e) + "\n" for e in history), encoding="utf-8")

    def checkpoint(step: int) -> None:
        save_checkpoint(ckpt_path, {
            "format": CKPT_FORMAT, "step": step, "config": conf.to_dict(), "settings": settings,
            "generator": generator.state_dict(), "discriminator": discriminator.state_dict(),
            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "torch_rng": torch.get_rng_state(),
            "history": history, "train_time_s": train_time,
        })

    weights = _loss_weights(args)
    running: dict[str, float] = {}
    interval_start, interval_steps = time.perf_counter(), 0
    for step in range(start_step + 1, args.steps + 1):
        t0 = time.perf_counter()
        lr = learning_rate(step, args.steps, args.lr)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        losses = training_step(generator, discriminator, opt_g, opt_d, data.batch(step, args.batch), weights)
        if not all(np.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"step {step}: non-finite loss {losses}; {ckpt_path} holds the last "
                                     "good state (resume with a lower --lr)")
        train_time += time.perf_counter() - t0
        interval_steps += 1
        for k, v in losses.items():
            running[k] = running.get(k, 0.0) + v
        if step % args.log_every == 0 or step == args.steps:
            elapsed = time.perf_counter() - interval_start
            entry = {"step": step, "train_time_s": round(train_time, 1), "lr": lr,
                     "s_per_step": round(elapsed / interval_steps, 3),
                     **{k: round(v / interval_steps, 4) for k, v in running.items()}}
            history.append(entry)
            line = json.dumps(entry)
            print(line, flush=True)
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(line + "\n")
            running, interval_start, interval_steps = {}, time.perf_counter(), 0
        if step % args.save_every == 0 or step == args.steps:
            checkpoint(step)
    final_step = max(start_step, args.steps)  # a checkpoint past --steps is finished as it is

    # validation: the held-out TNO thermal pairs (crops and whole images); a fit check on
    # the training Landsat bands per kind (not held out: says whether NIR/SWIR were learnt)
    val_crops = fixed_crops(val_sources, args.size, args.val_crops, seed=args.seed)
    landsat = [s for s in train_sources if s.collection == "landsat"]
    validation = {
        "tno_thermal_crops": evaluate(generator, val_crops, args.seed),
        "tno_thermal_full_images": evaluate(generator, [full_pair(s) for s in val_sources], args.seed),
        **{f"train_scenes_{k}_crops (not held out)": evaluate(
            generator, fixed_crops([s for s in landsat if s.kind == k], args.size, args.val_crops, args.seed + 1),
            args.seed) for k in KINDS},
    }
    verdict = {"tno_thermal_crops": _verdict(validation["tno_thermal_crops"]),
               "tno_thermal_full_images": _verdict(validation["tno_thermal_full_images"])}
    print(json.dumps({"validation": validation, "gan_closer": verdict}, indent=1), flush=True)

    rows = [(val_crops[i * args.val_crops], "val") for i in range(min(4, len(val_sources)))]
    if len(rows) < 4:  # no held-out pairs (no --data): training crops, and the picture says so
        rows += [(c, "train") for c in fixed_crops(train_sources[: 4 - len(rows)], args.size, 1, args.seed)]
    rows += [(c, "train") for c in fixed_crops([s for s in landsat if s.kind == "nir"][-1:], args.size, 1,
                                               args.seed + 1)]
    samples_path = out.with_name(out.name + ".samples.png")
    sample_picture(generator, rows, samples_path, args.seed)

    steps_run = max(args.steps - start_step, 0)
    card_provenance = {
        "method": "V2I-GAN (pix2pix-style conditional GAN, one generator for nir/swir/thermal by FiLM)",
        "data": provenance(train_sources),
        "validation_data": provenance(val_sources),
        "split": {"module": "dmreg.train.split", "tno_validation_pairs": list(TNO_VALIDATION_PAIRS),
                  "never_used": list(HELD_OUT_SCENES) + list(VALIDATION_ONLY)},
        "steps": final_step, "batch": args.batch, "crop": args.size, "seed": args.seed,
        "optimiser": {"name": "Adam", "lr": args.lr, "betas": [args.beta1, 0.999],
                      "schedule": f"constant, then linear to 10 % over the last {DECAY_SHARE:.0%} of the steps"},
        "losses": {"adversarial": "LSGAN, 70x70 PatchGAN conditioned on the visible image and the kind",
                   "l1": "masked L1 to the real infrared",
                   "structure": "1 - sign-invariant gradient-structure similarity (doubled-angle "
                                "gradient correlation, Gaussian window sigma 1.5 px)",
                   "weights": weights},
        "parameters": {"generator": count_parameters(generator), "discriminator": count_parameters(discriminator),
                       "discriminator_receptive_field_px": RECEPTIVE_FIELD},
        "hardware": hardware(),
        "train_time_s": round(train_time, 1),
        "time_per_step_s": round(train_time / final_step, 3) if final_step else None,
        "dmreg_commit": commit(),
        "final_losses": history[-1] if history else None,
        "validation": validation,
        "gan_closer_than": verdict,
        "samples": samples_path.name,
    }
    card = save_generator(generator.eval(), out, card_provenance)
    print(f"wrote {card.tensors} (sha256 {card.sha256[:12]}), {samples_path}", flush=True)
    return {"resumed_from": start_step, "step": final_step, "steps_run": steps_run, "card": card,
            "validation": validation}


def main(argv: list[str] | None = None) -> None:
    run(argv)


__all__ = ["METHODS", "evaluate", "learning_rate", "main", "run", "training_step"]

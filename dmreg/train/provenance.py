"""What a weights card says about the run that made it: the code and the machine."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def commit() -> str | None:
    """HEAD's short hash, marked '+changes' when tracked files under dmreg/ differ from
    it; None outside a git checkout or without git."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", "dmreg"],
                               capture_output=True).returncode != 0
        return f"{head}+changes" if dirty else head
    except (OSError, subprocess.CalledProcessError):
        return None


def hardware(device: torch.device | None = None) -> str:
    """The GPU's name on a CUDA ``device``, else 'CPU <model>, <n> threads' with torch's
    thread setting."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {_cpu_name()}, {torch.get_num_threads()} threads"


def _cpu_name() -> str:
    name = platform.processor() or platform.machine()
    try:  # Linux names the model here; platform.processor() is often empty or just 'x86_64' there
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        return name


__all__ = ["commit", "hardware"]

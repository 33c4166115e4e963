"""DistillMatch: a light student CNN distilled from a frozen vision foundation model."""

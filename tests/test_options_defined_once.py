"""The register options are defined once, in RegisterOptions: every command that takes
them exposes the same set, with the library's defaults.

A field is either a command-line option of `register`, `batch` and `evaluate` (named
as below) or listed in LIBRARY_ONLY with the reason it is not one.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from dmreg.options import RegisterOptions
from dmreg_cli.batch import batch_command
from dmreg_cli.evaluate import evaluate_command
from dmreg_cli.register import register_command

CLI_NAME = {"max_offset_px": "max_offset", "ransac_threshold_px": "ransac_threshold", "max_error_px": "max_error",
            "target_error_px": "target_error"}
"""Fields whose option drops the unit suffix."""

LIBRARY_ONLY = {
    "coarse_size": "a tuning constant of the coarse stage, not a user decision",
    "min_valid_fraction": "screening constant",
    "min_texture": "screening constant",
    "batch_size": "set by the matcher's device (GPU batches), not by users",
    "refinements": "the budget decides whether the refinement pass runs",
}
PER_COMMAND_ONLY = {
    # evaluate compares matchers on a manifest: the matcher and per-pair bands come from it
    "evaluate": {"matcher", "ref_modality", "mov_modality", "max_error_px", "rotation_search", "flip"},
    "register": {"seed"}, "batch": {"seed"},
}
COMMANDS = {"register": register_command, "batch": batch_command, "evaluate": evaluate_command}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_is_exposed_with_the_library_default(command):
    parameters = inspect.signature(COMMANDS[command]).parameters
    defaults = RegisterOptions()
    for f in dataclasses.fields(RegisterOptions):
        if f.name in LIBRARY_ONLY or f.name in PER_COMMAND_ONLY[command]:
            continue
        name = CLI_NAME.get(f.name, f.name)
        assert name in parameters, f"`dmreg {command}` has no option for RegisterOptions.{f.name}"
        assert parameters[name].default == getattr(defaults, f.name), (
            f"`dmreg {command}` --{name.replace('_', '-')} defaults to {parameters[name].default!r}, "
            f"the library to {getattr(defaults, f.name)!r}")


def test_library_only_fields_exist():
    names = {f.name for f in dataclasses.fields(RegisterOptions)}
    assert set(LIBRARY_ONLY) <= names
    for only in PER_COMMAND_ONLY.values():
        assert only <= names


def test_the_library_validates_modalities_as_the_command_line_does():
    from dmreg.errors import UsageError

    with pytest.raises(UsageError, match="--mov-modality 'radar'"):
        RegisterOptions(mov_modality="radar")
    assert RegisterOptions(ref_modality="optical", mov_modality="sar").mov_modality == "sar"

"""The thread count every stage shares: --threads, then DMREG_THREADS, then the CPUs."""

from __future__ import annotations

import pytest

from dmreg.errors import UsageError
from dmreg.runtime import THREADS_ENV, available_cpus, set_thread_count, thread_count


@pytest.fixture(autouse=True)
def no_override():
    set_thread_count(None)
    yield
    set_thread_count(None)


def test_default_is_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert thread_count() == available_cpus() >= 1


def test_environment_then_override(monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "3")
    assert thread_count() == 3
    set_thread_count(1)
    assert thread_count() == 1


@pytest.mark.parametrize("value", ["zero", "0", "-2", "1.5"])
def test_bad_environment_value_is_a_usage_error(monkeypatch, value):
    monkeypatch.setenv(THREADS_ENV, value)
    with pytest.raises(UsageError, match=THREADS_ENV):
        thread_count()


def test_bad_override_is_a_usage_error():
    with pytest.raises(UsageError, match="--threads"):
        set_thread_count(0)

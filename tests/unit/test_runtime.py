"""runtime.dry_run: the one rule for destructive DAGs' forms (issue 7)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compliance import runtime


def _ctx(run_type: str, **params) -> dict:
    return {"dag_run": SimpleNamespace(run_type=run_type), "params": params}


@pytest.mark.parametrize(
    ("run_type", "params", "dry"),
    [
        ("manual", {}, True),  # a person's run defaults to a dry run
        ("manual", {"dry_run": True}, True),
        ("manual", {"dry_run": False}, False),
        ("scheduled", {"dry_run": True}, False),  # the nightly/hourly run always acts
        ("scheduled", {}, False),
        ("asset_triggered", {"dry_run": True}, True),
    ],
)
def test_dry_run_unless_scheduled_or_turned_off(run_type, params, dry):
    assert runtime.dry_run(_ctx(run_type, **params)) is dry


def test_run_type_enum_values_are_read():
    enum_like = SimpleNamespace(value="scheduled")
    assert runtime.scheduled({"dag_run": SimpleNamespace(run_type=enum_like), "params": {}})


def test_context_channels_are_airflows_hooks_behind_the_protocol():
    """runtime wires `ctx.channels` from plugins/compliance_channels.py (on the plugins path)."""
    import airflow  # noqa: F401  (puts the plugins folder on sys.path, as in every component)

    from compliance.core.context import Channels
    from compliance.core.settings import Settings

    channels = runtime.channels(Settings.from_env({"COMPLIANCE_ALERT_SNS_TOPIC": "arn:x"}))
    assert type(channels).__name__ == "AirflowChannels"
    assert all(callable(getattr(channels, name)) for name in Channels.__dict__ if name[0] != "_")
    assert channels.configured() == ["sns"]

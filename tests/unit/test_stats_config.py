"""config/statistics.yaml: the shipped file is valid; mistakes are refused, naming the field."""

from __future__ import annotations

import copy

import pytest
import yaml

from compliance.core.datamap.validate import load_datamap
from compliance.stats.config import (
    StatsConfigError,
    check_against_datamap,
    load_config,
    parse_config,
)
from tests.unit.test_stats_figures import REPO

RAW = yaml.safe_load((REPO / "config" / "statistics.yaml").read_text())
DM = load_datamap(REPO / "config" / "datamap.yaml")


def variant(**changes) -> dict:
    raw = copy.deepcopy(RAW)
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = raw
        for part in path:
            node = node[part]
        node[last] = value
    return raw


def test_shipped_config_is_valid_and_matches_the_map():
    cfg = load_config(REPO / "config" / "statistics.yaml")
    check_against_datamap(cfg, DM)
    assert cfg.suppression.k == 10
    assert cfg.source.table == "email_events" and cfg.source.dimensions == ["device_type", "os"]
    assert cfg.ccpa.category_of("not_verified") == "unverifiable"
    assert cfg.ccpa.category_of("anything_else") == "other"


def test_source_key_changes_with_the_source():
    a = parse_config(RAW).source.key()
    b = parse_config(variant(source__event_type__open="opened")).source.key()
    assert a != b and len(a) == 16


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"suppression__k": 2}, "suppression.k"),
        ({"suppression__kk": 12}, "suppression.kk"),
        ({"source__table": "email events"}, "source.table"),
        ({"source__dimensions": ["a", "b", "c", "d"]}, "source.dimensions"),
        ({"output_prefix": "../up/"}, "output_prefix"),
        ({"ccpa__jurisdictions": ["ccpa", "lgpd"]}, "ccpa.jurisdictions.1"),
    ],
)
def test_structural_mistakes_name_the_field(changes, where):
    with pytest.raises(StatsConfigError) as err:
        parse_config(variant(**changes))
    assert where in [w for w, _ in err.value.problems]


@pytest.mark.parametrize(
    ("changes", "where", "words"),
    [
        ({"source__system": "erp"}, "source.system", "not a system"),
        ({"source__table": "campaigns"}, "source.table", "not a mapped table"),
        ({"source__time_column": "created_at"}, "source.time_column", "occurred_at"),
        ({"source__tenant_column": "contact_id"}, "source.tenant_column", "client_id"),
        ({"source__event_type__open": "sent"}, "source.event_type", "distinct values"),
        ({"source__campaign_column": "contact_id"}, "source", "two roles"),
    ],
)
def test_sources_the_map_does_not_describe_are_refused(changes, where, words):
    with pytest.raises(StatsConfigError) as err:
        check_against_datamap(parse_config(variant(**changes)), DM)
    assert any(w == where and words in what for w, what in err.value.problems)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(StatsConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")

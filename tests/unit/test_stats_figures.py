"""Every published figure against an independent computation, on SQLite and PostgreSQL.

A small hand-built world (compliance_dev.world.schema, our own rows) is aggregated by the job; the
test recomputes every figure in plain Python from the rows it inserted, then checks:
- published cells carry exactly the independent figures, suppressed ones carry none;
- no published cell (and no sum that subtraction reveals) describes fewer than k consumers;
- no suppressed cell can be worked out from the published cells and totals (rank test);
- a weekly run reads only its new week once the earlier weeks are rolled up.
"""

from __future__ import annotations

import io
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from compliance.core.datamap.validate import load_datamap
from compliance.core.outputs import ensure_workspace
from compliance.core.stores.sql import engine_from_url
from compliance.stats import config, figures, publish, rollup
from compliance.stats.period import Period, parse_period, week_start
from compliance_dev.world import schema
from tests.unit.test_stats_suppress import recoverable

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
BUCKET = "cj-stats-test"
TODAY = date(2026, 11, 26)
K = 10
DEVICES = [
    ("mobile", "iOS"),
    ("mobile", "iOS"),
    ("mobile", "Android"),
    ("mobile", "Android"),
    ("desktop", "Windows"),
    ("desktop", "macOS"),
    ("tablet", "iPadOS"),
    ("desktop", "Linux"),
]
# client id -> (industry, contacts): big and small clients, an industry with one small client
CLIENTS = {
    1: ("auto_dealer", 70),
    2: ("auto_dealer", 22),
    3: ("real_estate", 45),
    4: ("real_estate", 9),
    5: ("retail", 30),
    6: ("retail", 13),
    7: ("insurance", 6),
}


@dataclass(frozen=True)
class Event:
    campaign: int
    contact: int
    client: int
    type: str
    device: str | None
    os: str | None
    at: datetime


def build_world(engine: sa.Engine, seed: int = 5) -> list[Event]:
    """Clients, contacts, campaigns and e-mail events from 2026-09-07 to 2026-11-01."""
    rng = random.Random(seed)
    schema.metadata.create_all(engine)
    t0 = datetime(2026, 9, 1)
    clients, contacts, campaigns, events = [], [], [], []
    owner: dict[int, list[int]] = defaultdict(list)
    device_of: dict[int, tuple[str, str]] = {}
    next_contact, next_campaign = 1, 1
    for cid, (industry, n) in CLIENTS.items():
        clients.append(
            dict(
                client_id=cid,
                name=f"c{cid}",
                industry=industry,
                state="CA",
                active=True,
                created_at=t0,
            )
        )
        for _ in range(n):
            contacts.append(
                dict(
                    contact_id=next_contact,
                    client_id=cid,
                    created_at=t0,
                    updated_at=t0,
                    is_child=False,
                )
            )
            owner[cid].append(next_contact)
            device_of[next_contact] = rng.choice(DEVICES)
            next_contact += 1
    for cid in CLIENTS:
        for _ in range(4):
            sent = datetime(2026, 9, 7) + timedelta(seconds=rng.randrange(0, 54 * 86_400))
            campaigns.append(
                dict(
                    campaign_id=next_campaign,
                    client_id=cid,
                    name="x",
                    channel="email",
                    sent_at=sent,
                )
            )
            for contact in owner[cid]:
                if rng.random() > 0.75:
                    continue
                at = sent + timedelta(seconds=rng.randrange(0, 1_800))
                events.append(Event(next_campaign, contact, cid, "sent", None, None, at))
                if rng.random() < 0.4:
                    dev, os_ = device_of[contact] if rng.random() < 0.9 else (None, None)
                    at_open = at + timedelta(seconds=int(rng.expovariate(1 / 30_000)))
                    events.append(Event(next_campaign, contact, cid, "open", dev, os_, at_open))
                    if rng.random() < 0.2:  # opened again: one more event, not one more person
                        again = at_open + timedelta(hours=3)
                        events.append(Event(next_campaign, contact, cid, "open", dev, os_, again))
                    if rng.random() < 0.4:
                        at_click = at_open + timedelta(seconds=rng.randrange(5, 900))
                        events.append(
                            Event(next_campaign, contact, cid, "click", dev, os_, at_click)
                        )
                if rng.random() < 0.05:  # not a type the statistics count
                    events.append(Event(next_campaign, contact, cid, "bounce", None, None, at))
            next_campaign += 1
    # exactly on the period bounds of month:2026-10 (first one counts, second one does not)
    c = owner[1][0]
    events.append(Event(1, c, 1, "open", "mobile", "iOS", datetime(2026, 10, 1)))
    events.append(Event(1, c, 1, "open", "mobile", "iOS", datetime(2026, 11, 1)))
    with engine.begin() as conn:
        conn.execute(schema.clients.insert(), clients)
        conn.execute(schema.contacts.insert(), contacts)
        conn.execute(schema.campaigns.insert(), campaigns)
        conn.execute(
            schema.email_events.insert(),
            [
                dict(
                    campaign_id=e.campaign,
                    contact_id=e.contact,
                    client_id=e.client,
                    event_type=e.type,
                    device_type=e.device,
                    os=e.os,
                    occurred_at=e.at,
                )
                for e in events
            ],
        )
        for index in schema.INDEXES:
            index.create(conn, checkfirst=True)
    return events


# --------------------------------------------------------------------------- independent truth


class Cell:
    def __init__(self) -> None:
        self.events = {"sent": 0, "open": 0, "click": 0}
        self.who: dict[str, set] = {"sent": set(), "open": set(), "click": set()}

    def add(self, e: Event) -> None:
        self.events[e.type] += 1
        self.who[e.type].add((e.client, e.contact))

    @property
    def people(self) -> set:
        return self.who["sent"] | self.who["open"] | self.who["click"]

    def figures(self) -> dict[str, int]:
        return {
            "sent": self.events["sent"],
            "opens": self.events["open"],
            "clicks": self.events["click"],
            "consumers_exposed": len(self.who["sent"]),
            "consumers_opened": len(self.who["open"]),
            "consumers_clicked": len(self.who["click"]),
        }


def truth(events: list[Event], lo: datetime, hi: datetime) -> dict[tuple, Cell]:
    cells: dict[tuple, Cell] = defaultdict(Cell)
    for e in events:
        if not lo <= e.at < hi or e.type not in ("sent", "open", "click"):
            continue
        industry = CLIENTS[e.client][0]
        for key in (
            ("total",),
            ("industry", industry),
            ("client", e.client),
            ("campaign", e.campaign),
            ("campaign-week", e.campaign, week_start(e.at.date())),
        ):
            cells[key].add(e)
        if e.type != "sent":
            dev, os_ = e.device or "unknown", e.os or "unknown"
            for key in (("device",), ("device", dev), ("device", dev, os_)):
                cells[key].add(e)
    return cells


def campaign_uniques(cells: dict[tuple, Cell], campaign: int) -> tuple[str, dict[str, int]]:
    """What the job must publish for a campaign: exact if its events fall in one ISO week
    of the period, else the sum of its weekly distinct counts."""
    weeks = [c for key, c in cells.items() if key[0] == "campaign-week" and key[1] == campaign]
    if len(weeks) == 1:
        return "exact", cells[("campaign", campaign)].figures()
    total = {m: sum(w.figures()[m] for w in weeks) for m in MEASURES}
    return "sum_of_weeks", total


def weekly_truth(events: list[Event]) -> dict[date, Cell]:
    cells: dict[date, Cell] = defaultdict(Cell)
    for e in events:
        if e.type in ("sent", "open", "click"):
            cells[week_start(e.at.date())].add(e)
    return cells


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def world(db_url, s3):
    engine = engine_from_url(db_url)
    events = build_world(engine)
    ensure_workspace(s3, BUCKET)
    yield engine, events, s3
    engine.dispose()


def run(world, spec: str, today: date = TODAY, refresh: bool = False, cfg=None):
    engine, _events, s3 = world
    cfg = cfg or config.load_config(REPO / "config" / "statistics.yaml")
    dm = load_datamap(REPO / "config" / "datamap.yaml")
    period = parse_period(spec, None, None, today)
    result = publish.publish_event_statistics(
        engine, engine, s3, BUCKET, dm, cfg, period, today, refresh
    )
    return period, result


def csv(s3, key: str) -> pd.DataFrame:
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return pd.read_csv(io.BytesIO(body), dtype=str, keep_default_na=False)


MEASURES = [
    "sent",
    "opens",
    "clicks",
    "consumers_exposed",
    "consumers_opened",
    "consumers_clicked",
]


def check_rows(df: pd.DataFrame, keys: list[tuple], cells: dict[tuple, Cell], measures: list[str]):
    """Published rows equal the truth; suppressed rows are blank; published ones reach k."""
    published = 0
    for key, (_, row) in zip(keys, df.iterrows(), strict=True):
        cell = cells[key]
        if row["suppressed"] == "yes":
            assert all(row[m] == "" for m in measures), key
            continue
        published += 1
        assert len(cell.people) >= K, f"{key} published with {len(cell.people)} consumers"
        figures = cell.figures()
        for m in measures:
            assert int(row[m]) == figures[m], (key, m)
        if "open_rate" in row and figures["sent"]:
            assert float(row["open_rate"]) == pytest.approx(
                figures["opens"] / figures["sent"], abs=1e-4
            )
    return published


def check_tree(parent: list[int], hidden: set[int], people: list[set]):
    assert recoverable(parent, hidden) == set()
    for p in range(len(parent)):
        gone = [c for c, q in enumerate(parent) if q == p and c in hidden]
        if p in hidden or not gone:
            continue
        assert len(gone) >= 2
        assert len(set().union(*(people[c] for c in gone))) >= K


# --------------------------------------------------------------------------- tests


def test_month_figures_match_and_suppression_holds(world):
    period, result = run(world, "month:2026-10")
    _, events, s3 = world
    cells = truth(events, period.lo, period.hi)
    files = result["csv"]

    ind = csv(s3, files["by_industry"])
    ind_keys = [("total",)] + [("industry", v) for v in ind["industry"][1:]]
    assert check_rows(ind, ind_keys, cells, MEASURES) >= 3
    assert ind.iloc[0]["industry"] == "all" and ind.iloc[0]["suppressed"] == ""
    assert int(ind.iloc[0]["sent"]) == cells[("total",)].events["sent"]

    cli = csv(s3, files["by_client"])
    cli_keys = [("client", int(c)) for c in cli["client_id"]]
    assert 0 < check_rows(cli, cli_keys, cells, MEASURES) < len(cli)

    camp = csv(s3, files["by_campaign"])
    camp_keys = [("campaign", int(c)) for c in camp["campaign"]]
    assert 0 < check_rows(camp, camp_keys, cells, MEASURES[:3]) < len(camp)
    bases = set()
    for _, row in camp[camp["suppressed"] == ""].iterrows():
        basis, figures = campaign_uniques(cells, int(row["campaign"]))
        assert row["uniques"] == basis
        bases.add(basis)
        for m in MEASURES[3:]:
            assert int(row[m]) == figures[m], (row["campaign"], m)
    assert bases == {"exact", "sum_of_weeks"}  # the world has campaigns of both kinds

    # the audience tree: total -> industry -> client -> campaign
    keys = ind_keys + cli_keys + camp_keys
    index = {k: i for i, k in enumerate(keys)}
    parent = [-1, *[0] * (len(ind_keys) - 1)]
    parent += [index[("industry", v)] for v in cli["industry"]]
    parent += [index[("client", int(c))] for c in camp["client_id"]]
    rows = pd.concat([ind, cli, camp])["suppressed"].tolist()
    hidden = {i for i, s in enumerate(rows) if s == "yes"}
    check_tree(parent, hidden, [cells[k].people for k in keys])
    supp = result["suppression"]["audience"]
    assert supp["primary"] > 0 and supp["complementary"] > 0

    dev = csv(s3, files["by_device"])
    dev_keys = [
        ("device", *(v for v in (r["device_type"], r["os"]) if v != "all"))
        for _, r in dev.iterrows()
    ]
    assert check_rows(dev, dev_keys, cells, ["opens", "clicks"]) >= 2
    dindex = {k: i for i, k in enumerate(dev_keys)}
    dparent = [dindex.get(k[:-1], -1) for k in dev_keys]
    dhidden = {i for i, s in enumerate(dev["suppressed"]) if s == "yes"}
    check_tree(dparent, dhidden, [cells[k].people for k in dev_keys])
    opens = cells[("device",)].events["open"]
    for _, r in dev[dev["suppressed"] == ""].iterrows():
        assert float(r["share_of_opens"]) == pytest.approx(int(r["opens"]) / opens, abs=1e-4)


def test_weekly_series_matches_per_week_truth(world):
    _, result = run(world, "month:2026-10")
    _, events, s3 = world
    weeks = weekly_truth(events)
    series = csv(s3, result["csv"]["weekly"])
    assert len(series) >= 13 and series["week_start"].is_monotonic_increasing
    keys = [date.fromisoformat(w) for w in series["week_start"]]
    published = 0
    for monday, (_, row) in zip(keys, series.iterrows(), strict=True):
        cell = weeks[monday]
        if row["suppressed"] == "yes":
            continue
        if cell.events["sent"] + cell.events["open"] + cell.events["click"] == 0:
            assert row["sent"] == "0"  # an empty week is published as zeros
            continue
        published += 1
        assert len(cell.people) >= K
        for m in MEASURES:
            assert int(row[m]) == cell.figures()[m], (monday, m)
    assert published >= 4
    hidden = {i + 1 for i, s in enumerate(series["suppressed"]) if s == "yes"}
    check_tree([-1] + [0] * len(series), hidden, [set()] + [weeks[m].people for m in keys])
    in_period = series[series["in_period"] == "True"]["week_start"].tolist()
    assert in_period[0] == "2026-09-28" and in_period[-1] == "2026-10-26"

    rates = csv(s3, result["csv"]["weekly_industry_rates"])
    shown = rates[rates["suppressed"] == ""]
    assert len(shown) > 0
    for _, r in shown.iterrows():
        monday = date.fromisoformat(r["week_start"])
        mine = [
            e
            for e in events
            if week_start(e.at.date()) == monday and CLIENTS[e.client][0] == r["industry"]
        ]
        cell = Cell()
        for e in mine:
            if e.type in ("sent", "open", "click"):
                cell.add(e)
        assert len(cell.people) >= K
        assert float(r["open_rate"]) == pytest.approx(
            cell.events["open"] / cell.events["sent"], abs=1e-4
        )


def _statements(engine: sa.Engine, table: str) -> list[dict]:
    seen: list[dict] = []

    def listen(conn, cursor, statement, parameters, context, executemany):
        if table in statement and "cj_stats" not in statement:
            seen.append({"sql": statement, "params": parameters})

    sa.event.listen(engine, "before_cursor_execute", listen)
    return seen


def test_a_weekly_run_reads_only_its_week_once_rolled_up(world):
    engine, events, s3 = world
    seen = _statements(engine, "email_events")
    _, first = run(world, "week:2026-W42")
    assert first["rollups"] == {"reused": 0, "stored": 13, "live": 0}
    assert len(seen) == 3 * 13  # three statements per week, each week once
    seen.clear()
    _, second = run(world, "week:2026-W43")
    assert second["rollups"] == {"reused": 12, "stored": 1, "live": 0}
    assert len(seen) == 3  # the new week's statements, nothing else from the history
    lo, hi = datetime(2026, 10, 19), datetime(2026, 10, 26)  # W43
    for statement in seen:  # and they read that week's range, nothing wider
        params = statement["params"]
        values = list(params.values()) if isinstance(params, dict) else list(params)
        times = sorted(str(v)[:19] for v in values if str(v)[:2] == "20" and len(str(v)) >= 19)
        assert times == [str(lo), str(hi)]
    # and the rolled-up weeks equal the truth
    weeks = weekly_truth(events)
    series = csv(s3, second["csv"]["weekly"])
    for _, row in series[series["suppressed"] == ""].iterrows():
        cell = weeks[date.fromisoformat(row["week_start"])]
        assert int(row["sent"]) == cell.events["sent"]
        assert int(row["consumers_exposed"]) == len(cell.who["sent"])


def test_rollups_store_complete_weeks_only_and_refresh_recomputes(world):
    engine, _, _ = world
    # 2026-10 ends on a Saturday: its last week runs to Sunday 1 November, not over on that day
    _, result = run(world, "month:2026-10", today=date(2026, 11, 1))
    assert result["rollups"]["live"] == 1
    src = config.load_config().source
    assert rollup.stored_weeks(engine, src.key(), [date(2026, 10, 26)]) == set()
    assert rollup.stored_weeks(engine, src.key(), [date(2026, 10, 19)]) == {date(2026, 10, 19)}
    # a late event for an already rolled-up week shows only after a refresh
    with engine.begin() as conn:
        conn.execute(
            schema.email_events.insert(),
            [
                dict(
                    campaign_id=1,
                    contact_id=1,
                    client_id=1,
                    event_type="sent",
                    occurred_at=datetime(2026, 10, 7, 12),
                )
            ]
            * 3,
        )

    def sent_in_week() -> int:
        df = rollup.load_weeks(engine, src, [date(2026, 10, 5)], ["reach"])["reach"]
        return int(df["sent"].sum())

    before = sent_in_week()
    run(world, "month:2026-10")
    assert sent_in_week() == before
    run(world, "month:2026-10", refresh=True)
    assert sent_in_week() == before + 3


def test_single_week_is_exact_and_smaller_k_publishes_more(world):
    period, result = run(world, "week:2026-W41")
    _, events, s3 = world
    cells = truth(events, period.lo, period.hi)
    cli = csv(s3, result["csv"]["by_client"])
    check_rows(cli, [("client", int(c)) for c in cli["client_id"]], cells, MEASURES)
    base = config.load_config()
    looser = base.model_copy(update={"suppression": base.suppression.model_copy(update={"k": 5})})
    _, loose = run(world, "week:2026-W41", cfg=looser)
    strict_hidden = sum(v["primary"] for v in result["suppression"].values())
    loose_hidden = sum(v["primary"] for v in loose["suppression"].values())
    assert loose_hidden < strict_hidden


def test_an_empty_period_publishes_nothing_but_zeros(world):
    s3 = world[2]
    _, result = run(world, "month:2026-06")
    assert result["events"] == 0
    ind = csv(s3, result["csv"]["by_industry"])
    assert ind["industry"].tolist() == ["all"]
    assert ind.iloc[0]["sent"] == "0"


def test_a_source_the_map_does_not_know_is_refused(world):
    base = config.load_config()
    bad = base.model_copy(
        update={"source": base.source.model_copy(update={"table": "events_copy"})}
    )
    with pytest.raises(config.StatsConfigError, match=r"source\.table"):
        run(world, "month:2026-10", cfg=bad)


def test_period_object_round_trips_through_xcom():
    p = Period("month", date(2026, 10, 1), date(2026, 10, 31), "2026-10")
    assert Period.from_dict(p.to_dict()) == p
    assert publish.series_weeks(p, 13)[0] == date(2026, 8, 3)
    assert publish.series_weeks(p, 13)[-1] == date(2026, 10, 26)


def test_periods_are_cut_along_iso_weeks():
    whole, edges = figures.split(parse_period("month:2026-10", None, None, TODAY))
    assert whole == [date(2026, 10, 5), date(2026, 10, 12), date(2026, 10, 19)]
    assert edges == [
        (datetime(2026, 10, 1), datetime(2026, 10, 5)),
        (datetime(2026, 10, 26), datetime(2026, 11, 1)),
    ]
    # seven days from a Thursday: no whole week, two partial ones
    whole, edges = figures.split(parse_period(None, "2026-10-01", "2026-10-07", TODAY))
    assert whole == [] and len(edges) == 2
    whole, edges = figures.split(parse_period("week:2026-W42", None, None, TODAY))
    assert (whole, edges) == ([date(2026, 10, 12)], [])

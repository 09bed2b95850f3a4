"""The deterministic synthetic world: a service provider's CRM and object stores, from one seed.

Why it looks the way it does:
- Every job must be exercised against the awkward cases a real CRM has: one person behind several
  contact rows (duplicate leads, the same e-mail at two clients), extra identities in
  `contact_aliases`, mixed-case e-mails, children under 13 with and without parental consent,
  fields that must never be disclosed (R10), legal holds (R19), and three years of history so
  retention has something to expire. The generator plants each of these on purpose, with exact
  minimum counts so even the tiny world has them.
- Determinism: every table chunk draws from its own `numpy` stream keyed by (seed, table, chunk),
  so the same seed and `as_of` give byte-identical rows and objects whatever the chunk order or
  the backend. Times are whole seconds, relative to `as_of` midnight (UTC, stored naive).
- Speed: rows are built column-wise (numpy for numbers, pyarrow compute for strings) and loaded
  with PostgreSQL `COPY` (or one SQLite transaction), in chunks of `CHUNK_ROWS` so memory stays
  bounded. Indexes are created after loading, because maintaining them row by row costs more.
- Ids are assigned in creation order for contacts and campaigns (as an autoincrement would);
  child rows are not time-ordered by id, which no job may rely on anyway.

Nothing here prints personal data: `seed_command` reports counts and timings only.
"""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from sqlalchemy import DateTime, Engine, Table, inspect, literal, select
from sqlalchemy.schema import AddConstraint, CreateIndex

from compliance.core.datamap.model import DataMap
from compliance.core.stores.sql import is_sqlite
from compliance_dev.world import objects, r10_values, schema

DAY = 86_400
YEAR = 365 * DAY
HISTORY = 3 * YEAR  # "the last ~3 years": long enough for every retention rule to bite
CHUNK_ROWS = 500_000
SCALES: dict[str, int] = {"tiny": 150, "small": 2_000, "medium": 100_000, "large": 1_000_000}

# Rows per contact. email_events come from campaigns (~18 sends per contact, plus opens/clicks).
RATES: dict[str, float] = {
    "contact_aliases": 0.08,
    "extra_leads": 0.25,
    "messages": 4.0,
    "attachments_per_message": 0.12,
    "sends": 18.0,
    "web_visits": 3.0,
    "call_recordings": 0.02,  # one S3 object each: moto stores ~300 small objects/s
    "payments": 0.3,
    "portal_accounts": 0.25,
    "support_tickets": 0.1,
}


def _words(text: str) -> list[str]:
    return text.split()


# -- vocabulary --------------------------------------------------------------------------------
# Plain ASCII without quotes or backslashes: log lines are assembled without a JSON encoder
# (objects.py checks every value before writing), and CSV stays simple.

FIRST_NAMES = _words(
    "James Mary Robert Patricia John Jennifer Michael Linda David Elizabeth William Barbara "
    "Richard Susan Joseph Jessica Thomas Sarah Christopher Karen Charles Lisa Daniel Nancy Matthew "
    "Betty Anthony Sandra Mark Margaret Donald Ashley Steven Kimberly Andrew Emily Paul Donna "
    "Joshua Michelle Kenneth Carol Kevin Amanda Brian Melissa George Deborah Timothy Stephanie "
    "Ronald Rebecca Jason Sharon Edward Laura Jeffrey Cynthia Ryan Dorothy Jacob Amy Gary Kathleen "
    "Nicholas Angela Eric Shirley Jonathan Emma Stephen Brenda Larry Pamela Justin Nicole Scott "
    "Anna Brandon Samantha Benjamin Katherine Samuel Christine Gregory Debra Alexander Rachel "
    "Patrick Carolyn Frank Janet Raymond Maria Jack Olivia Dennis Heather Jerry Helen Tyler "
    "Catherine Aaron Diane Jose Julie Adam Victoria Nathan Joyce Henry Lauren Zachary Kelly "
    "Douglas Christina Peter Ruth Kyle Joan Noah Virginia Ethan Judith Jeremy Evelyn Christian "
    "Hannah "
    "Walter Andrea Keith Megan Austin Cheryl Roger Jacqueline Terry Madison Sean Teresa Gerald "
    "Abigail Carl Sophia Dylan Martha Harold Sara Jordan Gloria Jesse Janice Bryan Kathryn "
    "Lawrence Ann Arthur Isabella Gabriel Judy Bruce Charlotte Logan Julia Billy Grace Joe Amber "
    "Alan Alice Juan Jean Elijah Denise Willie Frances Albert Danielle Wayne Marilyn Randy Natalie "
    "Mason Beverly Vincent Diana Liam Brittany Roy Theresa Bobby Kayla Caleb Alexis Bradley Doris "
    "Russell Lori Lucas Tiffany Wei Mei Hiroshi Yuki Priya Arjun Aisha Omar Mateo Valentina Diego "
    "Camila Luis Sofia Carlos Ximena Thanh Linh Minh"
)
LAST_NAMES = _words(
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez "
    "Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris "
    "Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill "
    "Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Gomez Phillips "
    "Evans Turner Diaz Parker Cruz Edwards Collins Reyes Stewart Morris Morales Murphy Cook Rogers "
    "Gutierrez Ortiz Morgan Cooper Peterson Bailey Reed Kelly Howard Ramos Kim Cox Ward Richardson "
    "Watson Brooks Chavez Wood James Bennett Gray Mendoza Ruiz Hughes Price Alvarez Castillo "
    "Sanders Patel Myers Long Ross Foster Jimenez Powell Jenkins Perry Russell Sullivan Bell "
    "Coleman Butler Henderson Barnes Fisher Vasquez Simmons Romero Jordan Patterson Alexander "
    "Hamilton Graham Reynolds Griffin Wallace Moreno West Cole Hayes Bryant Herrera Gibson Ellis "
    "Tran Medina Aguilar Stevens Murray Ford Castro Marshall Owens Harrison Fernandez McDonald "
    "Woods Washington Kennedy Wells Vargas Henry Chen Freeman Webb Tucker Guzman Burns Crawford "
    "Olson Simpson Porter Hunter Gordon Mendez Silva Shaw Snyder Mason Dixon Munoz Hunt Hicks "
    "Holmes Palmer Wagner Black Robertson Boyd Rose Stone Salazar Fox Warren Mills Meyer Rice "
    "Schmidt Garza Daniels Ferguson Nichols Stephens Soto Weaver Ryan Gardner Payne Grant Dunn "
    "Spencer Hawkins Arnold Pierce Hansen Peters Santos Hart Bradley Knight Elliott Cunningham "
    "Duncan Armstrong Hudson Carroll Lane Riley Andrews Alvarado Delgado Berry Perkins Hoffman "
    "Johnston Matthews Pena Richards Contreras Willis Carpenter Sandoval Wang Li Zhang Liu "
    "Yamamoto Tanaka Sato Singh Kumar Shah Khan Ali Ahmed Okafor Mensah"
)
STREETS = _words(
    "Maple Oak Pine Cedar Elm Washington Lake Hill Park Main Sunset Highland Jefferson Lincoln "
    "Madison Franklin Walnut Cherry Willow Birch Spruce River Meadow Forest Valley Ridge Spring "
    "Church Mill Center Lakeview Orchard Mission Broadway Magnolia Peachtree Cypress Palm Canyon "
    "Mesa Vista"
)
STREET_SUFFIXES = _words("St Ave Blvd Dr Ln Ct Way Rd Pl Ter Cir")
# (city, state, zip prefix, area codes): California-heavy, since CCPA requests come from there.
CITIES: list[tuple[str, str, str, tuple[int, ...]]] = [
    ("Los Angeles", "CA", "900", (213, 310, 323)),
    ("San Diego", "CA", "921", (619, 858)),
    ("San Jose", "CA", "951", (408, 669)),
    ("San Francisco", "CA", "941", (415, 628)),
    ("Sacramento", "CA", "958", (916, 279)),
    ("Fresno", "CA", "937", (559,)),
    ("Irvine", "CA", "926", (949,)),
    ("Oakland", "CA", "946", (510, 341)),
    ("Houston", "TX", "770", (713, 832)),
    ("Dallas", "TX", "752", (214, 469, 972)),
    ("Austin", "TX", "787", (512, 737)),
    ("Miami", "FL", "331", (305, 786)),
    ("Orlando", "FL", "328", (407, 689)),
    ("Tampa", "FL", "336", (813,)),
    ("New York", "NY", "100", (212, 646, 917)),
    ("Buffalo", "NY", "142", (716,)),
    ("Phoenix", "AZ", "850", (602, 480)),
    ("Las Vegas", "NV", "891", (702, 725)),
    ("Seattle", "WA", "981", (206,)),
    ("Portland", "OR", "972", (503, 971)),
    ("Chicago", "IL", "606", (312, 773)),
    ("Atlanta", "GA", "303", (404, 678)),
    ("Denver", "CO", "802", (303, 720)),
    ("Charlotte", "NC", "282", (704, 980)),
]
EMAIL_DOMAINS = [
    ("gmail.com", 0.45),
    ("yahoo.com", 0.15),
    ("outlook.com", 0.1),
    ("icloud.com", 0.1),
    ("hotmail.com", 0.08),
    ("aol.com", 0.04),
    ("comcast.net", 0.04),
    ("att.net", 0.04),
]
ALIAS_DOMAINS = ["protonmail.com", "me.com", "live.com", "fastmail.com"]
AGENTS = _words("Dana Marcus Priya Luis Jenna Tom Keisha Ravi Megan Carlos")
WHEN = [
    "tomorrow at 10am",
    "this Saturday",
    "after 5pm today",
    "next Tuesday",
    "Friday afternoon",
    "Monday morning",
]


@dataclass(frozen=True)
class Industry:
    code: str
    weight: float  # share of clients
    open_rate: float  # per sent e-mail: differs by industry so statistics have something to show
    click_rate: float  # per open
    mobile_share: float
    amount_cents: int  # median payment
    client_names: tuple[str, ...]
    items: tuple[str, ...]
    themes: tuple[str, ...]
    paths: tuple[str, ...]  # web paths; a trailing "/" gets a numeric id


def _vehicles(models: Sequence[str], years: Sequence[int]) -> tuple[str, ...]:
    return tuple(f"{y} {m}" for i, m in enumerate(models) for y in years[i % 2 :: 2])


INDUSTRIES: list[Industry] = [
    Industry(
        "auto_dealer", 0.32, 0.21, 0.11, 0.66, 150_000,
        ("{last} Motors", "{city} Toyota", "{last} Ford", "{city} Honda", "{city} Auto Group"),
        _vehicles(
            ["Toyota RAV4", "Toyota Camry", "Honda CR-V", "Honda Civic", "Ford F-150",
             "Ford Explorer", "Chevrolet Silverado 1500", "Chevrolet Equinox", "Tesla Model Y",
             "Jeep Grand Cherokee", "Subaru Outback", "Hyundai Tucson", "Nissan Rogue",
             "Kia Telluride", "BMW X3"],
            [2017, 2018, 2019, 2020, 2021, 2022, 2023, 2024, 2025],
        ),
        ("Summer Sales Event", "Service Special", "Trade-In Appraisal Days",
         "Year-End Clearance", "New Model Launch"),
        ("/inventory/used", "/inventory/new", "/inventory/vehicle/", "/finance/apply",
         "/service/schedule", "/trade-in/value", "/specials"),
    ),
    Industry(
        "real_estate", 0.22, 0.27, 0.16, 0.55, 50_000,
        ("{last} Realty", "{city} Homes Group", "{last} and Associates Real Estate",
         "{city} Property Partners"),
        tuple(
            f"{beds}-bed {kind} on {street} {sfx}"
            for beds, kind, street, sfx in zip(
                [2, 3, 4, 3, 5, 2, 3, 4, 1, 3, 4, 2] * 3,
                ["condo", "townhome", "single-family home", "ranch house"] * 9,
                STREETS[:36],
                STREET_SUFFIXES * 4,
                strict=False,
            )
        ),
        ("New Listings Digest", "Open House Weekend", "Market Update",
         "First-Time Buyer Seminar", "Just Sold"),
        ("/listings/", "/listings/search", "/open-houses", "/mortgage-calculator",
         "/sell/home-value", "/agents"),
    ),
    Industry(
        "retail", 0.16, 0.17, 0.09, 0.72, 12_000,
        ("{last} Furniture", "{city} Outfitters", "{last} Home Store", "{city} Appliance Center"),
        ("sectional sofa", "queen mattress", "dining table set", "patio furniture set",
         "65-inch OLED TV", "french door refrigerator", "washer and dryer pair", "recliner",
         "area rug", "standing desk", "gas range", "bunk bed", "dishwasher", "bar stools"),
        ("Weekend Flash Sale", "Holiday Gift Guide", "Loyalty Rewards", "New Arrivals",
         "Clearance Event"),
        ("/products/", "/sale", "/cart", "/stores", "/financing", "/delivery"),
    ),
    Industry(
        "home_services", 0.12, 0.24, 0.13, 0.6, 45_000,
        ("{last} Plumbing", "{city} Heating and Air", "{last} Roofing", "{city} Solar"),
        ("water heater replacement", "AC tune-up", "roof inspection", "kitchen remodel estimate",
         "solar panel installation", "drain cleaning", "furnace repair", "window replacement",
         "electrical panel upgrade", "gutter cleaning"),
        ("Seasonal Maintenance Reminder", "Spring Tune-Up", "Financing Offer", "Referral Rewards",
         "Emergency Service Info"),
        ("/services/", "/book", "/estimate", "/financing", "/reviews", "/service-area"),
    ),
    Industry(
        "insurance", 0.1, 0.2, 0.07, 0.45, 15_000,
        ("{last} Insurance Agency", "{city} Insurance Group"),
        ("auto insurance quote", "homeowners policy", "renters insurance", "umbrella policy",
         "term life policy", "motorcycle insurance", "flood insurance", "small business policy"),
        ("Policy Renewal Reminder", "Bundle and Save", "Hurricane Preparedness",
         "Safe Driver Rewards", "Annual Review"),
        ("/quote/auto", "/quote/home", "/claims/", "/policies", "/agents", "/pay"),
    ),
    Industry(
        "powersports", 0.08, 0.23, 0.14, 0.74, 80_000,
        ("{city} Powersports", "{last} Marine and RV", "{last} Cycles"),
        _vehicles(
            ["Polaris RZR XP 1000", "Can-Am Maverick X3", "Yamaha YZ250F",
             "Harley-Davidson Street Glide", "Sea-Doo GTX 170", "Kawasaki Ninja 400",
             "Honda Pioneer 1000", "Winnebago Solis"],
            [2020, 2021, 2022, 2023, 2024, 2025],
        ),
        ("Riding Season Kickoff", "Parts and Accessories Sale", "Winter Storage Special",
         "Demo Days", "Financing Offer"),
        ("/inventory/", "/inventory/pre-owned", "/service", "/parts", "/finance/apply"),
    ),
]  # fmt: skip
LEAD_SOURCES = [
    "web_form", "google_ads", "facebook_ads", "third_party_site", "phone_call",
    "walk_in", "referral", "chat_widget", "text_message",
]  # fmt: skip
# Rows follow INDUSTRIES, columns LEAD_SOURCES.
LEAD_SOURCE_WEIGHTS = np.array(
    [
        [25, 12, 10, 25, 8, 8, 4, 6, 2],
        [20, 10, 15, 30, 6, 4, 10, 3, 2],
        [30, 15, 25, 2, 4, 10, 4, 8, 2],
        [25, 25, 10, 10, 18, 0, 8, 2, 2],
        [30, 20, 10, 15, 15, 2, 6, 1, 1],
        [25, 10, 15, 25, 8, 10, 4, 2, 1],
    ],
    dtype=float,
)
SOURCE_SCORE_BONUS = np.array([0.0, -0.05, -0.08, -0.02, 0.08, 0.15, 0.2, 0.0, 0.05])

# (device_type, os, browser, user agent, weight)
DEVICE_PROFILES: list[tuple[str, str, str, str, float]] = [
    ("mobile", "iOS", "Safari",
     "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
     "Gecko) Version/17.5 Mobile/15E148 Safari/604.1", 0.45),
    ("mobile", "Android", "Chrome",
     "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/125.0.0.0 Mobile Safari/537.36", 0.35),
    ("mobile", "Android", "Samsung Internet",
     "Mozilla/5.0 (Linux; Android 14; SM-S918U) AppleWebKit/537.36 (KHTML, like Gecko) "
     "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36", 0.2),
    ("desktop", "Windows", "Chrome",
     "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/125.0.0.0 Safari/537.36", 0.36),
    ("desktop", "Windows", "Edge",
     "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/125.0.0.0 Safari/537.36 Edg/125.0.0.0", 0.14),
    ("desktop", "Windows", "Outlook",
     "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17531; Pro)", 0.08),
    ("desktop", "macOS", "Safari",
     "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Safari/605.1.15", 0.14),
    ("desktop", "macOS", "Chrome",
     "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/125.0.0.0 Safari/537.36", 0.1),
    ("desktop", "Linux", "Firefox",
     "Mozilla/5.0 (X11; Linux x86_64; rv:126.0) Gecko/20100101 Firefox/126.0", 0.03),
    ("desktop", "ChromeOS", "Chrome",
     "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/125.0.0.0 Safari/537.36", 0.05),
    ("tablet", "iPadOS", "Safari",
     "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
     "Version/17.5 Mobile/15E148 Safari/604.1", 0.7),
    ("tablet", "Android", "Chrome",
     "Mozilla/5.0 (Linux; Android 13; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) "
     "Chrome/125.0.0.0 Safari/537.36", 0.3),
]  # fmt: skip
TABLET_SHARE = 0.1
REFERRERS = [
    "https://www.google.com/", "https://www.facebook.com/", "https://www.bing.com/",
    "https://www.instagram.com/", "https://duckduckgo.com/", "https://click.cj-mail.example/c/",
    "https://www.yelp.com/",
]  # fmt: skip
ISP_FIRST_OCTETS = np.array(
    [24, 47, 50, 66, 67, 68, 69, 70, 71, 72, 73, 75, 76, 96, 97, 98, 99, 104, 107, 108, 174]
)

SMS_OUT = [
    "Hi {first}, this is {agent} with {client}. Thanks for your interest in the {item}! "
    "When is a good time to chat?",
    "{first}, the {item} you asked about is still available. Want to stop by {when}?",
    "Reminder from {client}: your appointment is {when}. Reply C to confirm or STOP to opt out.",
    "Hi {first}! {agent} here from {client}. I have a few options similar to the {item}. "
    "Can I send photos?",
]
SMS_IN = [
    "Is the {item} still available?",
    "Yes {when} works for me",
    "Can you call me at {phone}? This is {first} {last}",
    "What is the best price on the {item}?",
    "STOP",
]
EMAIL_OUT = [
    "Dear {first} {last}, thank you for contacting {client} about the {item}. "
    "{agent} will follow up {when}.",
    "Hello {first}, here is the information you requested on the {item}. "
    "Reply to this email or call us to schedule a visit.",
    "Hi {first}, your quote from {client} for the {item} is attached. Questions? Just reply.",
]
EMAIL_IN = [
    "Hi, I am interested in the {item}. Please email me at {email}. Thanks, {first}",
    "Please send me more details about the {item}. My number is {phone}.",
    "Thanks {agent}, {when} works. {first} {last}",
]
ATTACHMENTS = [
    "IMG_{n}.jpg", "trade_in_photo_{n}.jpg", "quote_{n}.pdf", "credit_application_{last}.pdf",
    "pre_approval_letter.pdf", "{last}_drivers_license.jpg", "insurance_card.jpg",
    "floor_plan_{n}.pdf", "inspection_report.pdf", "receipt_{n}.pdf",
]  # fmt: skip
TICKETS = [
    ("Cannot log in to the portal", "I cannot log in to my account since last week."),
    ("Wrong appointment time", "The reminder I got shows the wrong time for my appointment."),
    ("Please update my phone number", "My new number is {phone}, please update it."),
    ("Question about my payment", "I was charged twice for the {item}."),
    ("Stop sending me texts", "I keep getting texts about the {item}, please stop."),
    ("Copy of my invoice", "Can you send me the invoice for the {item} to {email}?"),
    ("Problem with online application", "The finance application page gives me an error."),
    ("Change my email address", "Please use {email} from now on."),
]
AGENT_COMMENTS = [
    "Thanks for reaching out, we are looking into this.",
    "I have updated your record.",
    "Could you confirm the last four digits of the card you used?",
    "This has been resolved, let us know if anything else comes up.",
    "Escalated to the store manager.",
]
CONSUMER_COMMENTS = [
    "Thanks, that worked.",
    "Still not fixed, please call me at {phone}.",
    "The card ends in {last4}.",
    "Please remove me from your list. {first} {last}",
]
SECURITY_QUESTIONS = [
    "What was the name of your first pet?",
    "What city were you born in?",
    "What was your first car?",
    "What street did you grow up on?",
    "What is the name of your favorite teacher?",
]
SECURITY_ANSWERS = [
    "Buddy", "Max", "Bella", "Luna", "Charlie", "Daisy", "Rocky", "Coco", "Fresno", "Toledo",
    "Reno", "Boise", "Tulsa", "Civic", "Corolla", "Mustang", "Beetle", "Camaro", "Elm Street",
    "Oak Lane", "Mrs Baker", "Mr Ortiz", "Ms Nguyen",
]  # fmt: skip
CARD_BRANDS = [("visa", 0.52), ("mastercard", 0.26), ("amex", 0.14), ("discover", 0.08)]


# -- plan --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How big each part of the world is, from a contact count."""

    scale: str
    contacts: int
    clients: int
    log_days: int
    backup_days: int
    chunk_rows: int = CHUNK_ROWS

    @classmethod
    def for_scale(cls, scale: str | int) -> Plan:
        name = str(scale).strip().lower()
        if name in SCALES:
            n = SCALES[name]
        else:
            m = re.fullmatch(r"(\d[\d_]*)([km]?)", name)
            if not m:
                raise ValueError(f"scale {scale!r}: use tiny, small, medium, large or a number")
            n = int(m.group(1).replace("_", "")) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)]
            name = str(n)
        if n < 50:
            raise ValueError(f"scale {scale!r}: at least 50 contacts are needed")
        few = n < 1_000  # tests: a few days of objects keep them fast
        return cls(
            scale=name,
            contacts=n,
            clients=max(8, round(0.6 * math.sqrt(n))),
            log_days=4 if few else 35,
            backup_days=3 if few else 7,
        )

    def count(self, rate: str, minimum: int = 1) -> int:
        return max(minimum, round(RATES[rate] * self.contacts))


# -- small helpers -----------------------------------------------------------------------------


def _rng(seed: int, *key: int | str) -> np.random.Generator:
    """An independent stream per (seed, purpose, chunk): results do not depend on call order."""
    words = [seed & 0xFFFF_FFFF_FFFF_FFFF]
    words += [k if isinstance(k, int) else zlib.crc32(k.encode()) for k in key]
    return np.random.default_rng(words)


def _strings(values: Sequence[str]) -> pa.Array:
    return pa.array(list(values), pa.string())


def _cat(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _num(values: np.ndarray, width: int = 0) -> pa.Array:
    out = pc.cast(pa.array(values), pa.string())
    return pc.utf8_lpad(out, width=width, padding="0") if width else out


def _take(vocab: pa.Array, idx: np.ndarray) -> pa.Array:
    return vocab.take(pa.array(idx))


def _where(mask: np.ndarray, values: pa.Array, other: pa.Array | str | None = None) -> pa.Array:
    """values where mask, else `other` (null by default)."""
    alt = other if isinstance(other, pa.Array) else pa.scalar(other, values.type)
    return pc.if_else(pa.array(mask), values, alt)


def _weights(pairs: Sequence[tuple[Any, float]]) -> np.ndarray:
    w = np.array([p[1] for p in pairs], dtype=float)
    return w / w.sum()


_HEX = np.frombuffer(b"".join(f"{i:02x}".encode() for i in range(256)), dtype="S2")
_B64ISH = np.frombuffer(b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", "S1")


def _hex(rng: np.random.Generator, rows: int, nbytes: int) -> pa.Array:
    """Random lowercase hex strings, vectorised (tokens, digests)."""
    raw = _HEX[rng.integers(0, 256, (rows, nbytes), dtype=np.uint8)]
    return pc.cast(pa.array(np.ascontiguousarray(raw).view(f"S{2 * nbytes}").ravel()), pa.string())


def _bcryptish(rng: np.random.Generator, rows: int) -> pa.Array:
    raw = _B64ISH[rng.integers(0, 64, (rows, 53), dtype=np.uint8)]
    body = pc.cast(pa.array(np.ascontiguousarray(raw).view("S53").ravel()), pa.string())
    return _cat("$2b$12$", body)


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array(seconds.astype("datetime64[s]"))


def _between(
    rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, a: float, b: float
) -> np.ndarray:
    """A time in [lo, hi), crowded near `lo` (beta(a, b)): activity follows first contact."""
    span = np.maximum(hi - lo, 1)
    return lo + np.minimum((span * rng.beta(a, b, len(lo))).astype(np.int64), span - 1)


class _Template:
    """'Hi {first}, ...' rendered column-wise: literal pieces and slot columns joined."""

    def __init__(self, text: str) -> None:
        self.parts = re.split(r"\{(\w+)\}", text)

    def render(self, slots: Mapping[str, pa.Array], rows: int) -> pa.Array:
        pieces = [p if i % 2 == 0 else slots[p] for i, p in enumerate(self.parts) if p]
        if not any(isinstance(p, pa.Array) for p in pieces):
            return pa.array([self.parts[0]] * rows, pa.string())
        return _cat(*pieces)


def _render(
    templates: Sequence[str], choice: np.ndarray, slots: Mapping[str, pa.Array]
) -> pa.Array:
    """Row i gets templates[choice[i]]; each template renders only the rows that chose it."""
    parts: list[pa.Array] = []
    positions: list[np.ndarray] = []
    for t, text_ in enumerate(templates):
        rows = np.flatnonzero(choice == t)
        if len(rows):
            sub = {k: v.take(pa.array(rows)) for k, v in slots.items()}
            parts.append(_Template(text_).render(sub, len(rows)))
            positions.append(rows)
    if not parts:
        return pa.array([], pa.string())
    order = np.argsort(np.concatenate(positions), kind="stable")
    return pa.concat_arrays(parts).take(pa.array(order))


@dataclass(frozen=True)
class _Flat:
    """Per-group vocabularies flattened into one array, picked from by group index."""

    values: pa.Array
    offsets: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, groups: Sequence[Sequence[str]]) -> _Flat:
        counts = np.array([len(g) for g in groups])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return cls(_strings([v for g in groups for v in g]), offsets, counts)

    def pick(self, rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
        return self.offsets[group] + (rng.random(len(group)) * self.counts[group]).astype(np.int64)


ITEMS = _Flat.of([i.items for i in INDUSTRIES])  # what consumers shop for, by industry
THEMES = _Flat.of([i.themes for i in INDUSTRIES])
PATHS = _Flat.of([i.paths for i in INDUSTRIES])
INDUSTRY_INDEX = {industry.code: i for i, industry in enumerate(INDUSTRIES)}
DL_INDUSTRIES = [INDUSTRY_INDEX["auto_dealer"], INDUSTRY_INDEX["powersports"]]


def _choose_rows(rng: np.random.Generator, cum: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Categorical draw whose probabilities depend on each row's group (cum: groups x k)."""
    u = rng.random(len(group))[:, None]
    return (u > cum[group]).sum(axis=1)


# -- the world's state (what later tables need to know about earlier ones) ----------------------


@dataclass
class _World:
    plan: Plan
    seed: int
    now: int  # as_of midnight, epoch seconds
    # clients (index k is client_id k + 1)
    cl_industry: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    cl_city: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    cl_end: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cl_name: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    cl_domain: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    cl_phone: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    inactive: int = -1
    held_client: int = -1
    # contacts owning a message of the first chunk: the demo's scoped hold picks one (R19)
    msg_owners: np.ndarray | None = None
    # contacts (index i is contact_id i + 1; ids follow created_at)
    client: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    created: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    first: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    last: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    city: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    item: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    child: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    dup: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    activity: np.ndarray = field(default_factory=lambda: np.zeros(0))  # cumulative weights
    email: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    phone: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    ip: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    external_id: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # per-contact columns for chunks
    phone_serial_next: int = 0  # phone serials below this are taken
    by_client: np.ndarray = field(default_factory=lambda: np.zeros(0, int))  # contacts by client
    # aliases
    alias_contact: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    alias_email: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    alias_phone: pa.Array = field(default_factory=lambda: pa.array([], pa.string()))
    alias_created: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    # campaigns / tickets / recordings, for dependent tables and objects
    recording_keys: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.created)

    def rng(self, *key: int | str) -> np.random.Generator:
        return _rng(self.seed, *key)

    def industry_of(self, contacts: np.ndarray) -> np.ndarray:
        return self.cl_industry[self.client[contacts]]

    def pick_contacts(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """Contacts weighted by activity: a few people generate much of the traffic."""
        idx = np.searchsorted(self.activity, rng.random(k) * self.activity[-1], side="right")
        return np.minimum(idx, self.n - 1)

    def after_contact(
        self, rng: np.random.Generator, contacts: np.ndarray, a: float = 0.7, b: float = 1.4
    ) -> np.ndarray:
        return _between(rng, self.created[contacts], self.cl_end[self.client[contacts]], a, b)


# -- tables ------------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _clients(w: _World) -> pa.Table:
    """A handful to a few thousand businesses: the tenants. One is inactive (churned)."""
    k = w.plan.clients
    rng = w.rng("clients")
    ind_weights = np.array([i.weight for i in INDUSTRIES])
    industry = rng.choice(len(INDUSTRIES), k, p=ind_weights / ind_weights.sum())
    industry[: min(k, len(INDUSTRIES))] = np.arange(min(k, len(INDUSTRIES)))  # every industry
    city = rng.integers(0, len(CITIES), k)
    created = w.now - HISTORY - 30 * DAY - (rng.random(k) * 5 * YEAR).astype(np.int64)
    w.inactive, w.held_client = k - 1, k - 2
    end = np.full(k, w.now, dtype=np.int64)
    end[w.inactive] = w.now - 180 * DAY  # churned half a year ago: no activity since
    names, seen = [], set()
    for i in range(k):
        ind = INDUSTRIES[industry[i]]
        pattern = ind.client_names[int(rng.integers(len(ind.client_names)))]
        name = pattern.format(
            last=LAST_NAMES[int(rng.integers(len(LAST_NAMES)))], city=CITIES[city[i]][0]
        )
        base, j = name, 2
        while name in seen:
            name, j = f"{base} {j}", j + 1
        seen.add(name)
        names.append(name)
    area = np.array([CITIES[c][3][0] for c in city])
    w.cl_industry, w.cl_city, w.cl_end = industry, city, end
    w.cl_name = _strings(names)
    w.cl_domain = _strings([_slug(n) + ".example" for n in names])
    w.cl_phone = _cat("+1", _num(area), "555", _num(rng.integers(0, 10_000, k), 4))
    active = np.ones(k, bool)
    active[w.inactive] = False
    return pa.table(
        {
            "client_id": pa.array(np.arange(1, k + 1)),
            "name": w.cl_name,
            "industry": _strings([INDUSTRIES[i].code for i in industry]),
            "state": _strings([CITIES[c][1] for c in city]),
            "active": pa.array(active),
            "created_at": _ts(created),
            # the churned client's contract ended when its activity stopped (offboarding, R27)
            "contract_ended_at": pa.array(
                [end[i].astype("datetime64[s]") if not active[i] else None for i in range(k)],
                pa.timestamp("s"),
            ),
        }
    )


def _people(w: _World) -> None:
    """Contacts' identities, globally: later tables and the logs need them.

    Duplicates copy their source person's attributes: `same` rows are a second lead at the same
    client (same e-mail, new phone), `cross` rows the same person at another client (tenant
    isolation). Children, null e-mails and null phones are kept off duplicates and their
    sources, so each planted case stays clean.
    """
    n, k = w.plan.contacts, w.plan.clients
    rng = w.rng("contacts")
    created = np.sort(w.now - 1 - (HISTORY * rng.beta(1.0, 1.6, n)).astype(np.int64))
    client_w = 0.5 / k + 0.5 * (lambda x: x / x.sum())(rng.lognormal(0, 1, k))
    client = rng.choice(k, n, p=client_w / client_w.sum())
    active = np.setdiff1d(np.arange(k), [w.inactive])
    late = (client == w.inactive) & (created >= w.cl_end[w.inactive])
    client[late] = active[rng.integers(0, len(active), int(late.sum()))]

    n_same, n_cross = max(3, round(0.04 * n)), max(3, round(0.03 * n))
    dup_rows = rng.choice(np.arange(n // 10 + 1, n), n_same + n_cross, replace=False)
    dup = np.zeros(n, bool)
    dup[dup_rows] = True
    base = np.flatnonzero(~dup)
    below = np.maximum(np.searchsorted(base, dup_rows), 1)
    src = base[(rng.random(len(dup_rows)) * below).astype(np.int64)]
    same, cross = dup_rows[:n_same], dup_rows[n_same:]
    same_src, cross_src = src[:n_same], src[n_same:]
    client[same] = client[same_src]
    pos = np.searchsorted(active, client[cross_src])
    client[cross] = active[(pos + 1 + rng.integers(0, len(active) - 1, n_cross)) % len(active)]
    # a same-client duplicate of the churned client's contact cannot come after its end
    client[(client == w.inactive) & (created >= w.cl_end[w.inactive])] = active[0]

    pid = np.empty(n, np.int64)
    pid[base] = np.arange(len(base))
    pid[dup_rows] = pid[src]

    def person(values: np.ndarray) -> np.ndarray:  # duplicates copy their source's value
        values[dup_rows] = values[src]
        return values

    first = person(rng.integers(0, len(FIRST_NAMES), n))
    last = person(rng.integers(0, len(LAST_NAMES), n))
    same_state = rng.random(n) < 0.82
    city = np.where(same_state, w.cl_city[client], rng.integers(0, len(CITIES), n))
    states = np.array([c[1] for c in CITIES])
    by_state = {s: np.flatnonzero(states == s) for s in np.unique(states)}
    for s, members in by_state.items():  # a city of the client's state, not always its own
        rows = np.flatnonzero(same_state & (states[city] == s))
        city[rows] = members[rng.integers(0, len(members), len(rows))]
    city = person(city)
    domain = person(rng.choice(len(EMAIL_DOMAINS), n, p=_weights(EMAIL_DOMAINS)))
    pattern = person(rng.integers(0, 4, n))

    taken = np.zeros(n, bool)
    taken[dup_rows] = taken[src] = True
    free = np.flatnonzero(~taken)
    n_child = max(3, round(0.02 * n))
    picks = rng.permutation(free)
    children = np.sort(picks[:n_child])
    no_email = picks[n_child : n_child + round(0.03 * n)]
    no_phone = picks[n_child + round(0.03 * n) : n_child + round(0.06 * n)]
    child = np.zeros(n, bool)
    child[children] = True
    consent = np.full(n, -1, np.int8)  # -1 null, 0 false, 1 true
    consent[children] = np.resize(np.array([1, 0, -1], np.int8), n_child)[rng.permutation(n_child)]
    # adults, and a few teenagers: minors, but not children under 13 (the R24 boundary)
    adult_age = np.where(
        rng.random(n) < 0.03, 13.1 + 4.8 * rng.random(n), 18 + 62 * rng.beta(1.6, 2.2, n)
    )
    age_years = np.where(child, 4 + 8.9 * rng.random(n), adult_age)
    birth = person((w.now // DAY - (age_years * 365.25).astype(np.int64)).astype(np.int32))

    # E-mail: unique per person thanks to the person number; some rows in mixed case.
    fn = pc.utf8_lower(_take(_strings(FIRST_NAMES), first))
    ln = pc.utf8_lower(_take(_strings(LAST_NAMES), last))
    num = _num(pid + 11)
    local = pc.choose(
        pa.array(pattern.astype(np.int8)),
        _cat(fn, ".", ln, num),
        _cat(pc.utf8_slice_codeunits(fn, 0, 1), ln, num),
        _cat(fn, pc.utf8_slice_codeunits(ln, 0, 1), num),
        _cat(fn, "_", ln, num),
    )
    email = _cat(local, "@", _take(_strings([d for d, _ in EMAIL_DOMAINS]), domain))
    mixed = rng.random(n) < 0.05
    mixed[dup_rows] = rng.random(len(dup_rows)) < 0.5  # same person, different case
    email = _where(mixed, pc.utf8_title(email), email)
    no_email_mask = np.zeros(n, bool)
    no_email_mask[no_email] = True
    email = _where(~no_email_mask, email, None)

    # Phones: unique serials (person, then second numbers), scrambled into exchange + line.
    serial = pid.copy()
    serial[same] = len(base) + np.arange(n_same)
    new_phone = rng.random(n_cross) < 0.4
    serial[cross[new_phone]] = len(base) + n_same + np.arange(int(new_phone.sum()))
    w.phone_serial_next = len(base) + n_same + n_cross
    areas = np.array([[c[3][i % len(c[3])] for i in range(3)] for c in CITIES])
    area = person(areas[city, rng.integers(0, 3, n)])
    area[same] = areas[city[same], rng.integers(0, 3, n_same)]
    no_phone_mask = np.zeros(n, bool)
    no_phone_mask[no_phone] = True
    phone = _where(~no_phone_mask, _phone(area, serial))

    ip = person(
        (ISP_FIRST_OCTETS[rng.integers(0, len(ISP_FIRST_OCTETS), n)].astype(np.int64) << 24)
        + rng.integers(0, 1 << 24, n)
    )
    order = np.argsort(client, kind="stable")
    rank = np.empty(n, np.int64)
    starts = np.searchsorted(client[order], np.arange(k))
    rank[order] = np.arange(n) - starts[client[order]] + 1
    industry = w.cl_industry[client]
    w.extra.update(
        pid=pid,
        birth=birth,
        consent=consent,
        addr_num=person(rng.integers(1, 10_000, n)),
        street=person(rng.integers(0, len(STREETS), n)),
        suffix=person(rng.integers(0, len(STREET_SUFFIXES), n)),
        apt=person(np.where(rng.random(n) < 0.12, rng.integers(1, 400, n), 0)),
        zip_tail=person(rng.integers(0, 100, n)),
        dl=person(
            np.where(
                ~child & (rng.random(n) < np.where(np.isin(industry, DL_INDUSTRIES), 0.6, 0.1)),
                rng.integers(0, 10_000_000, n),
                -1,
            )
        ),
        dl_letter=person(rng.integers(0, 26, n)),
        updated_lag=np.where(rng.random(n) < 0.5, 0, rng.random(n)),
        rank=rank,
    )
    w.client, w.created, w.first, w.last, w.city = client, created, first, last, city
    w.child, w.dup = child, dup
    w.item = ITEMS.pick(rng, industry)
    w.activity = np.cumsum(rng.lognormal(0, 0.9, n))
    w.email, w.phone = email, phone
    w.ip = _ip(ip)
    w.external_id = _cat("C-", _num(client + 1), "-", _num(rank, 6))


def _phone(area: np.ndarray, serial: np.ndarray) -> pa.Array:
    """E.164 US numbers; distinct serials (< 8M) give distinct numbers within an area code."""
    s = (serial * 7_919 + 1_234) % 8_000_000
    return _cat("+1", _num(area), _num(200 + s // 10_000), _num(s % 10_000, 4))


def _ip(value: np.ndarray) -> pa.Array:
    return _cat(*[p for shift in (24, 16, 8, 0) for p in (".", _num((value >> shift) & 255))][1:])


def _random_ip(rng: np.random.Generator, rows: int) -> pa.Array:
    first = ISP_FIRST_OCTETS[rng.integers(0, len(ISP_FIRST_OCTETS), rows)].astype(np.int64)
    return _ip((first << 24) + rng.integers(0, 1 << 24, rows))


def _contacts(w: _World, lo: int, hi: int) -> pa.Table:
    x = {k: v[lo:hi] for k, v in w.extra.items()}
    city = w.city[lo:hi]
    address = _cat(
        _num(x["addr_num"]),
        " ",
        _take(_strings(STREETS), x["street"]),
        " ",
        _take(_strings(STREET_SUFFIXES), x["suffix"]),
    )
    apt = x["apt"] > 0
    address = _where(apt, _cat(address, " Apt ", _num(np.maximum(x["apt"], 1))), address)
    consent = x["consent"]
    created = w.created[lo:hi]
    end = w.cl_end[w.client[lo:hi]]
    updated = created + ((end - 1 - created) * x["updated_lag"]).astype(np.int64)
    letters = _strings([chr(65 + i) for i in range(26)])
    dl = _cat(_take(letters, x["dl_letter"]), _num(np.maximum(x["dl"], 0), 7))
    return pa.table(
        {
            "contact_id": pa.array(np.arange(lo + 1, hi + 1)),
            "client_id": pa.array(w.client[lo:hi] + 1),
            "external_id": w.external_id[lo:hi],
            "first_name": _take(_strings(FIRST_NAMES), w.first[lo:hi]),
            "last_name": _take(_strings(LAST_NAMES), w.last[lo:hi]),
            "email": w.email[lo:hi],
            "phone": w.phone[lo:hi],
            "address_line": address,
            "city": _take(_strings([c[0] for c in CITIES]), city),
            "state": _take(_strings([c[1] for c in CITIES]), city),
            "zip": _cat(_take(_strings([c[2] for c in CITIES]), city), _num(x["zip_tail"], 2)),
            "birth_date": pa.array(x["birth"], pa.date32()),
            "is_child": pa.array(w.child[lo:hi]),
            "parental_consent": pa.array(consent == 1, mask=consent < 0),
            "drivers_license": _where(x["dl"] >= 0, dl),
            "created_at": _ts(created),
            "updated_at": _ts(updated),
        }
    )


def _aliases(w: _World) -> pa.Table:
    """Extra e-mails/phones of a contact: identity resolution must follow them."""
    rng = w.rng("contact_aliases")
    a = w.plan.count("contact_aliases", 5)
    adults = np.flatnonzero(~w.child)
    contact = np.sort(adults[rng.integers(0, len(adults), a)])
    kind = rng.choice(3, a, p=[0.5, 0.35, 0.15])  # e-mail only, phone only, both
    fn = pc.utf8_lower(_take(_strings(FIRST_NAMES), w.first[contact]))
    ln = pc.utf8_lower(_take(_strings(LAST_NAMES), w.last[contact]))
    email = _cat(
        fn,
        ln,
        _num(w.extra["pid"][contact] + 11),
        "@",
        _take(_strings(ALIAS_DOMAINS), rng.integers(0, len(ALIAS_DOMAINS), a)),
    )
    email = _where(rng.random(a) < 0.1, pc.utf8_upper(email), email)
    serial = w.phone_serial_next + np.arange(a)
    areas = np.array([c[3][0] for c in CITIES])
    phone = _phone(areas[w.city[contact]], serial)
    created = w.after_contact(rng, contact)
    w.alias_contact, w.alias_created = contact, created
    w.alias_email = _where(kind != 1, email)
    w.alias_phone = _where(kind != 0, phone)
    return pa.table(
        {
            "alias_id": pa.array(np.arange(1, a + 1)),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(w.client[contact] + 1),
            "email": w.alias_email,
            "phone": w.alias_phone,
            "created_at": _ts(created),
        }
    )


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(lo, min(total, lo + size)) for lo in range(0, total, size)]


def _leads(w: _World, lo: int, hi: int) -> pa.Table:
    """One lead per contact when it was created, plus repeat enquiries later."""
    rng = w.rng("leads", lo)
    rows = np.arange(lo, hi)
    first = rows < w.n
    contact = np.where(first, np.minimum(rows, w.n - 1), w.pick_contacts(rng, hi - lo))
    created = np.where(first, w.created[contact], w.after_contact(rng, contact))
    industry = w.industry_of(contact)
    cum = np.cumsum(LEAD_SOURCE_WEIGHTS / LEAD_SOURCE_WEIGHTS.sum(1, keepdims=True), axis=1)
    source = _choose_rows(rng, cum, industry)
    item = np.where(rng.random(hi - lo) < 0.8, w.item[contact], ITEMS.pick(rng, industry))
    score = np.clip(rng.beta(2, 3, hi - lo) + SOURCE_SCORE_BONUS[source], 0, 1).round(3)
    return pa.table(
        {
            "lead_id": pa.array(rows + 1),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(w.client[contact] + 1),
            "source": _take(_strings(LEAD_SOURCES), source),
            "interest": _take(ITEMS.values, item),
            "score": pa.array(score),
            "created_at": _ts(created),
        }
    )


def _slots(w: _World, rng: np.random.Generator, contact: np.ndarray) -> dict[str, pa.Array]:
    rows = len(contact)
    return {
        "first": _take(_strings(FIRST_NAMES), w.first[contact]),
        "last": _take(_strings(LAST_NAMES), w.last[contact]),
        "item": _take(ITEMS.values, w.item[contact]),
        "client": w.cl_name.take(pa.array(w.client[contact])),
        "agent": _take(_strings(AGENTS), rng.integers(0, len(AGENTS), rows)),
        "when": _take(_strings(WHEN), rng.integers(0, len(WHEN), rows)),
        "phone": pc.coalesce(w.phone.take(pa.array(contact)), "this number"),
        "email": pc.coalesce(w.email.take(pa.array(contact)), "my old address"),
    }


def _messages(w: _World, lo: int, hi: int) -> tuple[pa.Table, pa.Table]:
    """SMS and e-mail conversations; bodies name the person and what they are shopping for."""
    rng = w.rng("messages", lo)
    rows = hi - lo
    contact = w.pick_contacts(rng, rows)
    has_phone = w.phone.take(pa.array(contact)).is_valid().to_numpy(zero_copy_only=False)
    has_email = w.email.take(pa.array(contact)).is_valid().to_numpy(zero_copy_only=False)
    sms = np.where(rng.random(rows) < 0.65, has_phone, ~has_email)
    outbound = rng.random(rows) < 0.6
    slots = _slots(w, rng, contact)
    kind = np.where(sms, np.where(outbound, 0, 1), np.where(outbound, 2, 3))
    groups = [SMS_OUT, SMS_IN, EMAIL_OUT, EMAIL_IN]
    offsets = np.cumsum([0] + [len(g) for g in groups])[:-1]
    sizes = np.array([len(g) for g in groups])
    choice = offsets[kind] + (rng.random(rows) * sizes[kind]).astype(np.int64)
    body = _render([t for g in groups for t in g], choice, slots)
    own = pc.if_else(
        pa.array(sms), w.phone.take(pa.array(contact)), w.email.take(pa.array(contact))
    )
    client = w.client[contact]
    theirs = pc.if_else(
        pa.array(sms),
        w.cl_phone.take(pa.array(client)),
        _cat("leads@", w.cl_domain.take(pa.array(client))),
    )
    created = w.after_contact(rng, contact)
    ids = np.arange(lo + 1, hi + 1)
    messages = pa.table(
        {
            "message_id": pa.array(ids),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(client + 1),
            "channel": _take(_strings(["email", "sms"]), sms.astype(np.int8)),
            "direction": _take(_strings(["inbound", "outbound"]), outbound.astype(np.int8)),
            "to_address": pc.if_else(pa.array(outbound), own, theirs),
            "body": body,
            "created_at": _ts(created),
        }
    )
    # Attachments: mostly on e-mails (photos, quotes, applications), a few MMS.
    p = RATES["attachments_per_message"] * np.where(sms, 0.25, 2.4)
    with_att = np.flatnonzero(rng.random(rows) < p)
    a = len(with_att)
    att_slots = {
        "n": _num(rng.integers(1000, 9999, a)),
        "last": pc.utf8_lower(_take(_strings(LAST_NAMES), w.last[contact[with_att]])),
    }
    filename = _render(ATTACHMENTS, rng.integers(0, len(ATTACHMENTS), a), att_slots)
    size = np.clip(rng.lognormal(12, 1.2, a), 2_000, 25_000_000).astype(np.int64)
    attachments = pa.table(
        {
            "attachment_id": pa.array(np.zeros(a, np.int64)),  # numbered by the caller
            "message_id": pa.array(ids[with_att]),
            "filename": filename,
            "size_bytes": pa.array(size.astype(np.int32)),
            "created_at": _ts(created[with_att]),
        }
    )
    return messages, attachments


@dataclass
class _Campaigns:
    client: np.ndarray
    sent: np.ndarray
    email: np.ndarray  # channel is e-mail (only those produce email_events)
    share: np.ndarray  # share of the eligible contacts each campaign sends to
    start: np.ndarray  # eligible contacts: group[start:end] in the by-client order
    end: np.ndarray
    open_rate: np.ndarray
    click_rate: np.ndarray


def _campaigns(w: _World) -> tuple[pa.Table, _Campaigns]:
    """Monthly-ish campaigns per client; each sends to a share of the contacts it had then."""
    rng = w.rng("campaigns")
    k = w.plan.clients
    per_client = np.bincount(w.client, minlength=k)
    # 24-60 campaigns over three years: enough sends (~18 per contact) even for small clients
    count = np.clip(np.round(per_client / 4 * rng.uniform(0.8, 1.2, k)), 24, 60).astype(np.int64)
    client = np.repeat(np.arange(k), count)
    start_t = np.maximum(w.now - HISTORY, 0)
    end_t = w.cl_end[client]
    sent = end_t - 1 - ((end_t - start_t) * rng.beta(1.0, 1.3, len(client))).astype(np.int64)
    order = np.argsort(sent, kind="stable")  # ids follow sending time
    client, sent = client[order], sent[order]
    c = len(client)
    email = rng.random(c) < 0.8
    industry = w.cl_industry[client]
    month = sent.astype("datetime64[s]").astype("datetime64[M]")
    label = pa.array(np.datetime_as_string(month, unit="M"))
    name = _cat(_take(THEMES.values, THEMES.pick(rng, industry)), " ", label)
    # eligible recipients: the client's contacts created before the send
    by_client = np.argsort(w.client, kind="stable")
    key = w.client[by_client].astype(np.int64) * (1 << 34) + w.created[by_client]
    start = np.searchsorted(key, client.astype(np.int64) * (1 << 34))
    end = np.searchsorted(key, client.astype(np.int64) * (1 << 34) + sent)
    end = np.where(email, end, start)  # SMS campaigns produce no email_events
    share = RATES["sends"] * w.n / max(1, (end - start).sum())
    share = np.clip(share * rng.uniform(0.7, 1.3, c), 0.02, 0.95)
    jitter = rng.uniform(0.75, 1.25, c)
    w.by_client = by_client
    table = pa.table(
        {
            "campaign_id": pa.array(np.arange(1, c + 1)),
            "client_id": pa.array(client + 1),
            "name": name,
            "channel": _take(_strings(["sms", "email"]), email.astype(np.int8)),
            "sent_at": _ts(sent),
        }
    )
    info = _Campaigns(
        client=client,
        sent=sent,
        email=email,
        share=share,
        start=start,
        end=end,
        open_rate=np.array([i.open_rate for i in INDUSTRIES])[industry] * jitter,
        click_rate=np.array([i.click_rate for i in INDUSTRIES])[industry] * jitter,
    )
    return table, info


def _campaign_batches(cam: _Campaigns, rows: int) -> list[tuple[int, int]]:
    """Consecutive campaigns whose candidate pairs (what a batch holds in memory) fill `rows`."""
    pairs = np.cumsum(cam.end - cam.start)
    cuts = np.searchsorted(pairs, np.arange(rows, pairs[-1] if len(pairs) else 0, rows))
    bounds = [0, *sorted(set((cuts + 1).tolist())), len(cam.share)]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def _device(w: _World, rng: np.random.Generator, industry: np.ndarray) -> np.ndarray:
    """A device profile per row; the mobile share depends on the industry's audience."""
    kinds = np.array([p[0] for p in DEVICE_PROFILES])
    mobile_share = np.array([i.mobile_share for i in INDUSTRIES])[industry]
    u = rng.random(len(industry))
    kind = np.where(
        u < mobile_share, "mobile", np.where(u < mobile_share + TABLET_SHARE, "tablet", "desktop")
    )
    out = np.empty(len(industry), np.int64)
    for name in ("mobile", "tablet", "desktop"):
        members = np.flatnonzero(kinds == name)
        wts = np.array([DEVICE_PROFILES[m][4] for m in members])
        rows = np.flatnonzero(kind == name)
        out[rows] = members[rng.choice(len(members), len(rows), p=wts / wts.sum())]
    return out


def _email_events(
    w: _World, cam: _Campaigns, batch: int, a: int, b: int, first_id: int
) -> pa.Table:
    rng = w.rng("email_events", batch)
    # every (campaign, eligible contact) pair, kept with the campaign's send share: no duplicates
    eligible = cam.end[a:b] - cam.start[a:b]
    camp = np.repeat(np.arange(a, b), eligible)
    first = np.repeat(np.cumsum(eligible) - eligible, eligible)
    pos = np.repeat(cam.start[a:b], eligible) + np.arange(len(camp)) - first
    keep = rng.random(len(camp)) < cam.share[camp]
    camp, contact = camp[keep], w.by_client[pos[keep]]
    end = w.cl_end[cam.client[camp]]  # as_of, or when the churned client left
    sent_t = np.minimum(cam.sent[camp] + rng.integers(0, 1_800, len(camp)), end - 1)
    opened = rng.random(len(camp)) < cam.open_rate[camp]
    open_t = sent_t + rng.exponential(8 * 3_600, len(camp)).astype(np.int64)
    opened &= open_t < end
    clicked = opened & (rng.random(len(camp)) < cam.click_rate[camp])
    click_t = open_t + rng.exponential(600, len(camp)).astype(np.int64)
    clicked &= click_t < end
    # a click comes from the device (and network) that opened the e-mail
    sends = len(camp)
    device = _device(w, rng, w.industry_of(contact))
    ip = pc.if_else(
        pa.array(rng.random(sends) < 0.7), w.ip.take(pa.array(contact)), _random_ip(rng, sends)
    )
    geo = np.where(rng.random(sends) < 0.75, w.city[contact], rng.integers(0, len(CITIES), sends))
    o, c = np.flatnonzero(opened), np.flatnonzero(clicked)
    src = np.concatenate([np.arange(sends), o, c])
    ev_type = np.concatenate([np.zeros(sends, int), np.ones(len(o), int), np.full(len(c), 2)])
    ev_t = np.concatenate([sent_t, open_t[o], click_t[c]])
    order = np.argsort(ev_t, kind="stable")
    src, ev_type, ev_t = src[order], ev_type[order], ev_t[order]
    ev_camp, ev_contact, device, geo = camp[src], contact[src], device[src], geo[src]
    ip = ip.take(pa.array(src))
    rows = len(ev_t)
    seen = ev_type > 0  # a send has no device; opens and clicks reveal one
    profile = {i: _strings([p[i] for p in DEVICE_PROFILES]) for i in range(3)}
    return pa.table(
        {
            "event_id": pa.array(np.arange(first_id, first_id + rows)),
            "campaign_id": pa.array(ev_camp + 1),
            "contact_id": pa.array(ev_contact + 1),
            "client_id": pa.array(cam.client[ev_camp] + 1),
            "event_type": _take(_strings(["sent", "open", "click"]), ev_type),
            "device_type": _where(seen, _take(profile[0], device)),
            "os": _where(seen, _take(profile[1], device)),
            "browser": _where(seen, _take(profile[2], device)),
            "ip": _where(seen, ip),
            "geo_city": _where(seen, _take(_strings([x[0] for x in CITIES]), geo)),
            "geo_region": _where(seen, _take(_strings([x[1] for x in CITIES]), geo)),
            "occurred_at": _ts(ev_t),
        }
    )


def _web_visits(w: _World, lo: int, hi: int) -> pa.Table:
    rng = w.rng("web_visits", lo)
    rows = hi - lo
    contact = w.pick_contacts(rng, rows)
    industry = w.industry_of(contact)
    path = _take(PATHS.values, PATHS.pick(rng, industry))
    with_id = pc.ends_with(path, "/")
    path = pc.if_else(with_id, _cat(path, _num(rng.integers(10_000, 999_999, rows))), path)
    url = _cat("https://www.", w.cl_domain.take(pa.array(w.client[contact])), path)
    referrer = _take(_strings(REFERRERS), rng.integers(0, len(REFERRERS), rows))
    device = _device(w, rng, industry)
    home = rng.random(rows) < 0.75
    return pa.table(
        {
            "visit_id": pa.array(np.arange(lo + 1, hi + 1)),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(w.client[contact] + 1),
            "url": url,
            "referrer": _where(rng.random(rows) < 0.7, referrer),
            "ip": pc.if_else(pa.array(home), w.ip.take(pa.array(contact)), _random_ip(rng, rows)),
            "user_agent": _take(_strings([p[3] for p in DEVICE_PROFILES]), device),
            "device_type": _take(_strings([p[0] for p in DEVICE_PROFILES]), device),
            "visited_at": _ts(w.after_contact(rng, contact, 0.8, 1.2)),
        }
    )


def _call_recordings(w: _World) -> pa.Table:
    rng = w.rng("call_recordings")
    r = w.plan.count("call_recordings", 12)
    contact = w.pick_contacts(rng, r)
    client = w.client[contact]
    ids = np.arange(1, r + 1)
    key = _cat("recordings/", _num(client + 1), "/", _num(ids), ".wav")
    w.recording_keys = key.to_pylist()
    caller = pc.coalesce(w.phone.take(pa.array(contact)), w.cl_phone.take(pa.array(client)))
    return pa.table(
        {
            "recording_id": pa.array(ids),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(client + 1),
            "caller_phone": caller,
            "s3_key": key,
            "duration_s": pa.array(np.clip(rng.lognormal(5, 0.9, r), 8, 3_600).astype(np.int32)),
            "voiceprint": _where(rng.random(r) < 0.6, _cat("vp1:", _hex(rng, r, 32))),
            "recorded_at": _ts(w.after_contact(rng, contact)),
        }
    )


def _payments(w: _World) -> pa.Table:
    rng = w.rng("payments")
    p = w.plan.count("payments", 20)
    contact = np.sort(w.pick_contacts(rng, p))
    client = w.client[contact]
    median = np.array([i.amount_cents for i in INDUSTRIES])[w.cl_industry[client]]
    amount = np.clip(median * rng.lognormal(0, 0.9, p), 500, 2_000_000_000).astype(np.int64)
    ach = rng.random(p) < 0.1
    brand = rng.choice(len(CARD_BRANDS), p, p=_weights(CARD_BRANDS))
    card = ~ach
    return pa.table(
        {
            "payment_id": pa.array(np.arange(1, p + 1)),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(client + 1),
            "card_token": _where(card, _cat("tok_", _hex(rng, p, 12))),
            "card_last4": _where(card, _num(rng.integers(0, 10_000, p), 4)),
            "card_brand": _where(card, _take(_strings([b for b, _ in CARD_BRANDS]), brand)),
            "bank_account": _where(ach, _num(rng.integers(10**8, 10**12, p))),
            "amount_cents": pa.array(amount.astype(np.int32)),
            "paid_at": _ts(w.after_contact(rng, contact, 1.0, 1.0)),
        }
    )


def _portal_accounts(w: _World) -> pa.Table:
    rng = w.rng("portal_accounts")
    adults = np.flatnonzero(~w.child)
    q = min(len(adults), w.plan.count("portal_accounts", 20))
    contact = np.sort(rng.choice(adults, q, replace=False))
    user = _cat(
        pc.utf8_lower(_take(_strings(FIRST_NAMES), w.first[contact])),
        ".",
        pc.utf8_lower(_take(_strings(LAST_NAMES), w.last[contact])),
        _num(rng.integers(1, 100, q)),
    )
    return pa.table(
        {
            "account_id": pa.array(np.arange(1, q + 1)),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(w.client[contact] + 1),
            "username": user,
            "password_hash": _bcryptish(rng, q),
            "security_question": _take(
                _strings(SECURITY_QUESTIONS), rng.integers(0, len(SECURITY_QUESTIONS), q)
            ),
            "security_answer": _take(
                _strings(SECURITY_ANSWERS), rng.integers(0, len(SECURITY_ANSWERS), q)
            ),
            "created_at": _ts(w.after_contact(rng, contact, 0.5, 2.0)),
        }
    )


def _support(w: _World) -> tuple[pa.Table, pa.Table]:
    rng = w.rng("support_tickets")
    t = w.plan.count("support_tickets", 10)
    contact = np.sort(w.pick_contacts(rng, t))
    kind = rng.integers(0, len(TICKETS), t)
    slots = _slots(w, rng, contact)
    body = _render([b for _, b in TICKETS], kind, slots)
    sign = _render(["{first} {last}", "Thanks, {first}"], rng.integers(0, 2, t), slots)
    created = w.after_contact(rng, contact)
    tickets = pa.table(
        {
            "ticket_id": pa.array(np.arange(1, t + 1)),
            "contact_id": pa.array(contact + 1),
            "client_id": pa.array(w.client[contact] + 1),
            "subject": _take(_strings([s for s, _ in TICKETS]), kind),
            "body": _cat(body, " ", sign),
            "created_at": _ts(created),
        }
    )
    per = 1 + rng.poisson(1.5, t)
    ticket = np.repeat(np.arange(t), per)
    m = len(ticket)
    by_agent = rng.random(m) < 0.6
    cslots = {k: v.take(pa.array(ticket)) for k, v in slots.items()}
    cslots["last4"] = _num(rng.integers(0, 10_000, m), 4)
    texts = AGENT_COMMENTS + CONSUMER_COMMENTS
    pick = np.where(
        by_agent,
        rng.integers(0, len(AGENT_COMMENTS), m),
        len(AGENT_COMMENTS) + rng.integers(0, len(CONSUMER_COMMENTS), m),
    )
    author = pc.if_else(
        pa.array(by_agent),
        _cat(cslots["agent"], " (support)"),
        _cat(cslots["first"], " ", cslots["last"]),
    )
    gaps = rng.exponential(9 * 3_600, m).astype(np.int64)
    running = np.cumsum(gaps)
    firsts = np.cumsum(per) - per
    when = created[ticket] + running - np.repeat(running[firsts] - gaps[firsts], per)
    end = w.cl_end[w.client[contact[ticket]]] - 1
    comments = pa.table(
        {
            "comment_id": pa.array(np.arange(1, m + 1)),
            "ticket_id": pa.array(ticket + 1),
            "author": author,
            "body": _render(texts, pick, cslots),
            "created_at": _ts(np.minimum(np.maximum(when, created[ticket]), end)),
        }
    )
    return tickets, comments


def _legal_holds(w: _World) -> pa.Table:
    """Holds (R19): one live consumer hold, one expired, one client-wide; a live consumer hold on
    one table (`messages`, legal_claims) whose request the demo erases in part; more at scale."""
    rng = w.rng("legal_holds")
    ok = np.flatnonzero(~w.child & ~w.dup & (w.client != w.inactive) & (w.client != w.held_client))
    extra = w.plan.contacts // 50_000
    people = rng.choice(ok, 2 + extra, replace=False)
    now = w.now
    rows: list[tuple[int, int | None, str, str, str, int, int | None]] = [
        (
            int(w.client[people[0]]),
            int(people[0]) + 1,
            "all",
            "Preservation request from a county sheriff's office",
            "law_enforcement_hold",
            now - 40 * DAY,
            now + 140 * DAY,
        ),
        (
            int(w.client[people[1]]),
            int(people[1]) + 1,
            "call_recordings",
            "Dispute over a recorded sales call, since settled",
            "legal_claims",
            now - 400 * DAY,
            now - 30 * DAY,
        ),
        (
            w.held_client,
            None,
            "all",
            "Litigation hold: class action against the client",
            "legal_claims",
            now - 200 * DAY,
            None,
        ),
    ]
    owners = w.msg_owners if w.msg_owners is not None else ok
    scoped = np.setdiff1d(np.intersect1d(ok, owners), people)
    if len(scoped):  # the scoped hold: its consumer's messages stay, the rest is erasable
        person = int(scoped[0])
        rows.append(
            (
                int(w.client[person]),
                person + 1,
                "messages",
                "Litigation hold on a disputed conversation",
                "legal_claims",
                now - 20 * DAY,
                now + 60 * DAY,
            )
        )
    scopes = ["all", "messages", "payments", "call_recordings"]
    codes = ["legal_claims", "law_enforcement_hold", "legal_obligation"]
    for i, person in enumerate(people[2:]):
        created = now - int(rng.integers(5, 300)) * DAY
        rows.append(
            (
                int(w.client[person]),
                int(person) + 1,
                scopes[i % 4],
                "Hold requested by the client's counsel",
                codes[i % 3],
                created,
                created + int(rng.integers(60, 720)) * DAY,
            )
        )
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "hold_id": pa.array(np.arange(1, len(rows) + 1)),
            "client_id": pa.array(np.array(cols[0]) + 1),
            "contact_id": pa.array(list(cols[1]), pa.int64()),
            "scope": _strings(cols[2]),
            "reason": _strings(cols[3]),
            "exception_code": _strings(cols[4]),
            "created_at": _ts(np.array(cols[5], np.int64)),
            "expires_at": pa.array(
                np.array([e or 0 for e in cols[6]], np.int64).astype("datetime64[s]"),
                mask=np.array([e is None for e in cols[6]]),
            ),
        }
    )


# -- loading -----------------------------------------------------------------------------------


class _Sink:
    """Bulk loading in one transaction: PostgreSQL COPY from in-memory CSV, SQLite executemany.

    On PostgreSQL the fresh tables' foreign keys are dropped for the load and added back at the
    end: their per-row triggers cut COPY from ~500k to ~50k rows/s, while re-adding validates
    each in a single pass. Secondary indexes are built after the load for the same reason. As
    all of it is one transaction, a failed seed leaves empty tables with their constraints.

    For SQLite, values are turned into the exact text SQLAlchemy itself stores
    (`YYYY-MM-DD HH:MM:SS.ffffff`, 0/1), so reads and string comparisons behave as if
    SQLAlchemy had inserted them.
    """

    def __init__(self, engine: Engine) -> None:
        self.sqlite = is_sqlite(engine)
        self.dialect = engine.dialect
        self.conn = engine.raw_connection()
        self.cur = self.conn.cursor()
        self.load_seconds: dict[str, float] = {}
        self.indexes = [
            i
            for t in schema.metadata.sorted_tables
            for i in sorted(t.indexes, key=lambda i: str(i.name))
        ]
        if not self.sqlite:
            self.cur.execute("SET synchronous_commit TO off")
            names = [t.name for t in schema.metadata.sorted_tables]
            self.cur.execute(
                "SELECT conrelid::regclass::text, conname FROM pg_constraint "
                "WHERE contype = 'f' AND conrelid = ANY(%s::regclass[])",
                (names,),
            )
            for table, name in self.cur.fetchall():
                self.cur.execute(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"')
        for index in self.indexes:
            self.cur.execute(f"DROP INDEX IF EXISTS {index.name}")

    def _ddl(self, element: Any) -> None:
        self.cur.execute(str(element.compile(dialect=self.dialect)))

    def write(self, table: Table, data: pa.Table) -> None:
        started = time.perf_counter()
        cols = [c.name for c in table.columns]
        data = data.select(cols)
        if self.sqlite:
            values = [self._sqlite_column(data.column(c)) for c in cols]
            marks = ",".join("?" * len(cols))
            self.cur.executemany(
                f"INSERT INTO {table.name} ({','.join(cols)}) VALUES ({marks})",
                zip(*values, strict=True),
            )
        else:
            buf = io.BytesIO()
            pacsv.write_csv(data, buf, pacsv.WriteOptions(include_header=False))
            buf.seek(0)
            self.cur.copy_expert(
                f"COPY {table.name} ({','.join(cols)}) FROM STDIN WITH (FORMAT csv)", buf
            )
        took = time.perf_counter() - started
        self.load_seconds[table.name] = self.load_seconds.get(table.name, 0.0) + took

    @staticmethod
    def _sqlite_column(col: pa.ChunkedArray) -> list[Any]:
        if pa.types.is_timestamp(col.type):
            col = _cat(pc.cast(col, pa.string()), ".000000")
        elif pa.types.is_date(col.type):
            col = pc.cast(col, pa.string())
        elif pa.types.is_boolean(col.type):
            col = pc.cast(col, pa.int8())
        return col.to_pylist()

    def finish(self) -> None:
        """Indexes; on PostgreSQL foreign keys back and sequences moved past the generated ids
        (so later inserts, a new hold or contact, do not collide); then the one commit."""
        for index in self.indexes:
            self._ddl(CreateIndex(index))
        if not self.sqlite:
            for table in schema.metadata.sorted_tables:
                for fk in table.foreign_key_constraints:
                    self._ddl(AddConstraint(fk))
                pk = next(iter(table.primary_key.columns)).name
                self.cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{pk}'), "
                    f"(SELECT COALESCE(MAX({pk}), 0) + 1 FROM {table.name}), false)"
                )
        self.conn.commit()

    def close(self) -> None:
        self.cur.close()
        self.conn.close()


# -- entry points ------------------------------------------------------------------------------


class WorldNotEmpty(RuntimeError):
    """Seeding would mix a new world into existing data; `replace=True` starts over."""


@dataclass(frozen=True)
class WorldSummary:
    """Counts only (never personal data), plus timings for throughput reports."""

    scale: str
    seed: int
    as_of: date
    tables: dict[str, int]
    stores: dict[str, int]  # objects written per data-map store
    log_lines: int
    log_bytes: int  # uncompressed
    stored_bytes: dict[str, int]  # compressed bytes per store
    seconds: dict[str, float]  # per table (generate + load) and per phase
    load_seconds: dict[str, float]  # per table, database time only (COPY / executemany)

    def rows_per_second(self, table: str) -> float:
        return self.tables[table] / max(self.seconds.get(table, 0.0), 1e-9)

    def report(self) -> str:
        """Counts and rates only: safe for logs and terminals (no value from the world)."""
        lines = [
            f"world seeded: scale {self.scale}, seed {self.seed}, as of {self.as_of}",
            f"  {'table':<20} {'rows':>12} {'rows/s':>12} {'db rows/s':>12}",
        ]
        for name, rows in self.tables.items():
            total = rows / max(self.seconds.get(name, 0.0), 1e-9)
            db = rows / max(self.load_seconds.get(name, 0.0), 1e-9)
            lines.append(f"  {name:<20} {rows:>12,} {total:>12,.0f} {db:>12,.0f}")
        for name, count in self.stores.items():
            mb = self.stored_bytes.get(name, 0) / 1e6
            lines.append(f"  {name:<20} {count:>12,} objects {mb:>10,.1f} MB stored")
        lines.append(f"  log lines {self.log_lines:,}, {self.log_bytes / 1e6:,.1f} MB raw")
        phases = ", ".join(f"{k[1:]} {v:.1f}s" for k, v in self.seconds.items() if k[0] == "_")
        lines.append(f"  phases: {phases}")
        return "\n".join(lines)


def _time_column(table: Table) -> str:
    """The first DateTime column: when the row came to be (backups cut snapshots by it)."""
    for col in table.columns:
        if isinstance(col.type, DateTime):
            return col.name
    raise ValueError(f"{table.name} has no DateTime column")


def _existing_rows(engine: Engine) -> list[str]:
    names = set(inspect(engine).get_table_names())
    busy = []
    with engine.connect() as conn:
        for table in schema.metadata.sorted_tables:
            row = select(literal(1)).select_from(table).limit(1)
            if table.name in names and conn.execute(row).first() is not None:
                busy.append(table.name)
    return busy


def seed_world(
    engine: Engine,
    s3: Any,
    datamap: DataMap,
    scale: str | int = "tiny",
    seed: int = 7,
    as_of: date | None = None,
    *,
    replace: bool = False,
) -> WorldSummary:
    """Create the CRM schema, fill it, and write the object stores the data map names.

    Refuses a database whose world tables hold rows, or stores that hold objects, unless
    `replace` (then tables are dropped and the stores' objects, all versions, deleted): two
    worlds mixed together would break every count the tests and the demo rely on.
    """
    as_of = as_of or datetime.now(UTC).date()
    plan = Plan.for_scale(scale)
    busy = _existing_rows(engine)
    busy_stores = objects.busy_stores(s3, datamap)
    if (busy or busy_stores) and not replace:
        more = ", ..." if len(busy) > 3 else ""
        what = [f"{len(busy)} table(s) with rows ({', '.join(busy[:3])}{more})"] if busy else []
        what += [f"store(s) with objects: {', '.join(busy_stores)}"] if busy_stores else []
        raise WorldNotEmpty(
            "refusing to seed: " + "; ".join(what) + ". Use a fresh database and buckets, "
            "or pass replace=True to drop the world's tables and objects first."
        )
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    if replace:
        schema.metadata.drop_all(engine)
        objects.clear_stores(s3, datamap)
    schema.metadata.create_all(engine)
    seconds["_schema"] = time.perf_counter() - started

    w = _World(plan=plan, seed=seed, now=(as_of - date(1970, 1, 1)).days * DAY)
    counts: dict[str, int] = {}
    sink = _Sink(engine)
    tables = {t.name: t for t in schema.metadata.sorted_tables}

    def put(name: str, data: pa.Table) -> None:
        sink.write(tables[name], data)
        counts[name] = counts.get(name, 0) + data.num_rows

    def timed(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
        return out

    try:
        timed("clients", lambda: put("clients", _clients(w)))
        timed("contacts", lambda: _people(w))
        for lo, hi in _chunks(w.n, plan.chunk_rows):
            timed("contacts", lambda lo=lo, hi=hi: put("contacts", _contacts(w, lo, hi)))
        timed("contact_aliases", lambda: put("contact_aliases", _aliases(w)))
        n_leads = w.n + plan.count("extra_leads")
        for lo, hi in _chunks(n_leads, plan.chunk_rows):
            timed("leads", lambda lo=lo, hi=hi: put("leads", _leads(w, lo, hi)))
        next_att = 1
        for lo, hi in _chunks(plan.count("messages"), plan.chunk_rows):
            t0 = time.perf_counter()
            msgs, atts = _messages(w, lo, hi)
            if w.msg_owners is None:
                w.msg_owners = np.unique(msgs.column("contact_id").to_numpy() - 1)
            ids = pa.array(np.arange(next_att, next_att + atts.num_rows))
            atts = atts.set_column(0, "attachment_id", ids)
            next_att += atts.num_rows
            put("messages", msgs)
            t1 = time.perf_counter()
            put("message_attachments", atts)
            seconds["messages"] = seconds.get("messages", 0.0) + t1 - t0
            seconds["message_attachments"] = (
                seconds.get("message_attachments", 0.0) + time.perf_counter() - t1
            )
        cam_table, cam = timed("campaigns", lambda: _campaigns(w))
        timed("campaigns", lambda: put("campaigns", cam_table))
        next_event = 1
        for i, (a, b) in enumerate(_campaign_batches(cam, 2 * plan.chunk_rows)):
            t0 = time.perf_counter()
            events = _email_events(w, cam, i, a, b, next_event)
            next_event += events.num_rows
            put("email_events", events)
            seconds["email_events"] = seconds.get("email_events", 0.0) + time.perf_counter() - t0
        counts.setdefault("email_events", 0)
        for lo, hi in _chunks(plan.count("web_visits"), plan.chunk_rows):
            timed("web_visits", lambda lo=lo, hi=hi: put("web_visits", _web_visits(w, lo, hi)))
        timed("call_recordings", lambda: put("call_recordings", _call_recordings(w)))
        timed("payments", lambda: put("payments", _payments(w)))
        timed("portal_accounts", lambda: put("portal_accounts", _portal_accounts(w)))
        tickets, comments = timed("support_tickets", lambda: _support(w))
        timed("support_tickets", lambda: put("support_tickets", tickets))
        timed("ticket_comments", lambda: put("ticket_comments", comments))
        timed("legal_holds", lambda: put("legal_holds", _legal_holds(w)))
        timed("_indexes_and_keys", sink.finish)
    finally:
        sink.close()
    timed("_analyze", lambda: _analyze(engine))

    pa.default_memory_pool().release_unused()  # the load's chunks are gone: give memory back
    # R10 fixtures (issue 16): before the backups are dumped, so a snapshot row holds them too
    planted = r10_values.plant_rows(engine, as_of)
    counts["support_tickets"] = counts.get("support_tickets", 0) + 1
    t0 = time.perf_counter()
    objects.ensure_buckets(s3, datamap)
    stats = objects.write_stores(
        s3,
        datamap,
        engine=engine,
        population=objects.Population(
            now=w.now,
            client_id=w.client + 1,
            created=w.created,
            eligible=np.flatnonzero(w.client != w.inactive),
            email=w.email,
            phone=w.phone,
            ip=w.ip,
            external_id=w.external_id,
            alias_contact=w.alias_contact,
            alias_email=w.alias_email,
            alias_phone=w.alias_phone,
            alias_created=w.alias_created,
            user_agents=[p[3] for p in DEVICE_PROFILES],
        ),
        recording_keys=w.recording_keys,
        tables=[(t, _time_column(t)) for t in schema.metadata.sorted_tables],
        log_days=plan.log_days,
        backup_days=plan.backup_days,
        as_of=as_of,
        seed=seed,
        contacts=plan.contacts,
    )
    for name, _key in r10_values.write_log_lines(s3, datamap, planted):
        stats.objects[name] = stats.objects.get(name, 0) + 1  # the line is not a generated one
    seconds["_objects"] = time.perf_counter() - t0
    seconds.update({f"_{k}": v for k, v in stats.seconds.items()})
    seconds["_total"] = time.perf_counter() - started
    return WorldSummary(
        scale=plan.scale,
        seed=seed,
        as_of=as_of,
        tables={t.name: counts.get(t.name, 0) for t in schema.metadata.sorted_tables},
        stores=stats.objects,
        log_lines=stats.log_lines,
        log_bytes=stats.log_bytes,
        stored_bytes=stats.stored_bytes,
        seconds=seconds,
        load_seconds=dict(sink.load_seconds),
    )


def _analyze(engine: Engine) -> None:
    """Fresh statistics, so the jobs' first queries on a big world get sensible plans."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")


def seed_command(args: argparse.Namespace) -> int:
    """`python -m compliance_dev world seed`: counts on stdout, never a value from the world."""
    from compliance.core.datamap.validate import DataMapInvalid, load_datamap
    from compliance.core.settings import Settings
    from compliance.core.stores.s3 import s3_client
    from compliance.core.stores.sql import engine_from_url

    try:
        Plan.for_scale(args.scale)
        as_of = date.fromisoformat(args.as_of) if args.as_of else datetime.now(UTC).date()
    except ValueError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    try:
        datamap = load_datamap(args.datamap or Settings.from_env().datamap_path)
    except DataMapInvalid as exc:  # lists the map's mistakes: structure only, no personal data
        sys.stderr.write(f"{exc}\n")
        return 1
    engine = engine_from_url(args.db)
    s3 = s3_client(
        endpoint_url=args.s3,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    try:
        summary = seed_world(
            engine,
            s3,
            datamap,
            args.scale,
            args.seed,
            as_of,
            replace=bool(getattr(args, "replace", False)),
        )
    except WorldNotEmpty as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    finally:
        engine.dispose()
    sys.stdout.write(summary.report() + "\n")
    return 0

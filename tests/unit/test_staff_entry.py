"""The reference a run's conf may carry, and nothing else (issue 16): `staff_entry.run_ref`.

The page and the runs are tested end to end in tests/e2e/test_staff_entry.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from compliance.requests import staff_entry


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("6/DEL-1", ("6", "DEL-1")),
        ("acme-east/REQ:2026.01_7", ("acme-east", "REQ:2026.01_7")),
        (
            "7f3c5a4e-0000-4000-8000-000000000001/A-1",
            ("7f3c5a4e-0000-4000-8000-000000000001", "A-1"),
        ),
    ],
)
def test_a_reference_is_client_slash_request_id(value, expected):
    assert staff_entry.run_ref({"request_ref": value}) == expected


@pytest.mark.parametrize(
    "value",
    ["jane@example.com", "6/jane@example.com", "/DEL-1", "6/", "6/has space", 42, ["6/DEL-1"]],
)
def test_anything_else_stops_the_run_naming_the_field_not_the_value(value):
    with pytest.raises(ValueError) as err:
        staff_entry.run_ref({"request_ref": value})
    assert str(err.value).startswith("request_ref:")
    assert "jane" not in str(err.value)


@pytest.mark.parametrize("name", ["email", "phone", "contact_id", "identities"])
def test_a_conf_with_an_identity_stops_the_run(name):
    with pytest.raises(ValueError) as err:
        staff_entry.run_ref({name: "jane@example.com", "request_ref": "6/DEL-1"})
    assert str(err.value).startswith(f"{name}:") and "jane" not in str(err.value)


def test_every_request_type_has_a_dag_and_the_form_has_no_identity():
    import importlib.util

    from compliance.requests.request_format import RequestType

    assert set(staff_entry.DAG_FOR_TYPE) == {t.value for t in RequestType}
    assert staff_entry.DAG_FOR_TYPE["delete"] == "deletion_requests"
    # loaded under another name, off sys.path: a `compliance_forms` imported here, before
    # Airflow loads the plugins folder, left the api-server without the desk's routes (405)
    path = Path(__file__).parents[2] / "plugins" / "compliance_forms.py"
    spec = importlib.util.spec_from_file_location("cj_test_forms", path)
    assert spec is not None and spec.loader is not None
    compliance_forms = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compliance_forms)

    form = compliance_forms.request_form()
    assert set(form) == {"request_ref"}

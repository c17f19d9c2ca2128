"""License terms and acceptable use policies: the shipped data loads, validates and says what the
licenses say; malformed data is refused with a RegistryError."""

from __future__ import annotations

import copy
import datetime as dt
import re
import tomllib
from dataclasses import replace
from importlib import resources
from typing import Any

import pytest

from llamahub.errors import DataFileError, RegistryError
from llamahub.policy import (
    AUP_GROUPS,
    aup_terms,
    known_uses,
    license_for_family,
    license_terms,
    load_aups,
    load_licenses,
)
from llamahub.policy.terms import check_licenses, parse_aup, parse_license
from llamahub.registry import _builtin

META = ("llama2", "llama3", "llama3.1", "llama3.2")
EIGHT_LANGUAGES = {"English", "German", "French", "Italian", "Portuguese", "Hindi", "Spanish", "Thai"}
NEW_IN_32 = {"circumvent_safety_measures", "bio_chemical_weapons", "unlawful_third_party_tools"}


def _raw(kind: str, stem: str) -> dict[str, Any]:
    path = resources.files("llamahub_registry") / kind / f"{stem}.toml"
    return tomllib.loads(path.read_text(encoding="utf-8"))


# --- the shipped files ------------------------------------------------------------------------


def test_every_license_and_aup_file_loads() -> None:
    assert set(load_licenses()) == {*META, "llama1", "llama3.3", "llama-debug"}
    assert set(load_aups()) == {"llama1-aup", "llama2-aup", "llama3-aup", "llama3.2-aup", "llama-debug-aup"}


def test_licenses_name_existing_aups() -> None:
    aups = load_aups()
    expected = {"llama2": "llama2-aup", "llama3": "llama3-aup", "llama3.1": "llama3-aup",
                "llama3.2": "llama3.2-aup", "llama-debug": "llama-debug-aup", "llama1": "llama1-aup",
                "llama3.3": "llama3.2-aup"}
    for license_id, terms in load_licenses().items():
        assert terms.aup == expected[license_id]
        assert terms.aup in aups


def test_every_registry_variant_has_its_license() -> None:
    licenses = load_licenses()
    for variant in _builtin():
        assert variant.license in licenses, variant.name
        terms = licenses[variant.license]
        assert terms.covers(variant.family)
        assert license_for_family(variant.family) is terms
        # Code Llama came after the Llama 2 license it ships under
        assert terms.release_date.isoformat() <= variant.release_date


def test_every_license_is_used_by_some_variant() -> None:
    used = {v.license for v in _builtin()}
    assert used == set(load_licenses())


def test_families() -> None:
    families = {t.id: t.families for t in load_licenses().values()}
    assert families == {"llama2": ("llama-2", "code-llama"), "llama3": ("llama-3",),
                        "llama3.1": ("llama-3.1",), "llama3.2": ("llama-3.2",),
                        "llama-debug": ("llama-debug", "llama-debug-big"),
                        "llama1": ("llama-1",), "llama3.3": ("llama-3.3",)}


def test_thresholds_are_700m_measured_on_release_date() -> None:
    for terms in load_licenses().values():
        if terms.research_only:  # Llama 1: no commercial use, so no MAU clause
            assert terms.mau_threshold is None
            continue
        assert terms.mau_threshold == 700_000_000
        assert terms.mau_measured_on == terms.release_date


def test_release_dates() -> None:
    dates = {i: license_terms(i).release_date for i in META}
    assert dates == {"llama2": dt.date(2023, 7, 18), "llama3": dt.date(2024, 4, 18),
                     "llama3.1": dt.date(2024, 7, 23), "llama3.2": dt.date(2024, 9, 25)}


def test_outputs_may_train_other_models_only_from_31() -> None:
    allowed = {i for i in META if license_terms(i).outputs_may_train_other_models}
    assert allowed == {"llama3.1", "llama3.2"}
    for license_id in META:
        terms = license_terms(license_id)
        assert (terms.outputs_training_condition is not None) == terms.outputs_may_train_other_models


def test_attribution_and_derivative_names() -> None:
    assert license_terms("llama2").attribution is None
    assert license_terms("llama2").derivative_name_prefix is None
    assert license_terms("llama3").attribution == "Built with Meta Llama 3"
    assert license_terms("llama3").derivative_name_prefix == "Llama 3"
    for license_id in ("llama3.1", "llama3.2"):
        assert license_terms(license_id).attribution == "Built with Llama"
        assert license_terms(license_id).derivative_name_prefix == "Llama"


def test_languages() -> None:
    for license_id in ("llama2", "llama3"):
        assert license_terms(license_id).languages == ("English",)
    for license_id in ("llama3.1", "llama3.2"):
        assert set(license_terms(license_id).languages) == EIGHT_LANGUAGES
        assert len(license_terms(license_id).languages) == 8


def test_urls_and_missing_text_hashes() -> None:
    for license_id in META:
        terms = license_terms(license_id)
        assert terms.url is not None and terms.url.startswith("https://www.llama.com/")
        assert terms.issuer == "Meta Platforms, Inc."
        assert aup_terms(terms.aup).url.startswith("https://www.llama.com/")
    for terms in load_licenses().values():
        assert terms.text_sha256 is None  # a hub fills it in from the LICENSE file it imports


def test_debug_license_says_it_is_not_meta() -> None:
    terms = license_terms("llama-debug")
    assert "Meta" not in terms.issuer
    assert terms.url is None
    assert any("not a license from Meta" in line for line in terms.summary)


def test_eu_multimodal_restriction_only_in_32() -> None:
    restricted = {t.id for t in load_licenses().values() if t.eu_multimodal_restriction}
    assert restricted == {"llama3.2"}
    terms = license_terms("llama3.2")
    assert terms.is_multimodal("llama-3.2-11b-vision-instruct")
    assert terms.is_multimodal("Llama-3.2-90B-Vision")
    for variant in _builtin():
        if variant.family == "llama-3.2":
            assert not terms.is_multimodal(variant.name)  # the shipped 3.2 models are text-only


def test_summaries_and_obligations_are_short_lines() -> None:
    for terms in load_licenses().values():
        assert 3 <= len(terms.summary) <= 6
        assert terms.redistribution
        for line in (*terms.summary, *terms.redistribution):
            assert "\n" not in line and len(line) <= 110
            assert "Llama Materials" not in line  # a term of art of Meta's text; we use our own words


# --- acceptable use policies ----------------------------------------------------------------------


def test_aup_categories_v2_v3_and_32() -> None:
    v2, v3, v32 = (aup_terms(i).prohibited for i in ("llama2-aup", "llama3-aup", "llama3.2-aup"))
    assert v2 == v3
    assert v32 == v2 | NEW_IN_32
    assert not v2 & NEW_IN_32
    assert "critical_infrastructure" in v2
    assert aup_terms("llama-debug-aup").prohibited == v32


def test_aup_categories_are_well_formed() -> None:
    for aup in load_aups().values():
        groups = {c.group for c in aup.categories}
        assert groups == set(AUP_GROUPS) - {"scope"} or aup.id == "llama1-aup"
        for category in aup.categories:
            assert category.certifiable is False
            assert category.description and "\n" not in category.description
            assert len(category.description) <= 110


def test_allowed_uses() -> None:
    expected = {"chatbot", "summarization", "code_assistant", "research", "education", "customer_support",
                "content_generation", "translation", "search", "data_analysis"}
    for aup in load_aups().values():
        assert expected <= set(aup.allowed_uses) or aup.allowed_uses == ("research",)  # Llama 1
        assert not set(aup.allowed_uses) & aup.prohibited
    assert expected <= set(known_uses())
    assert list(known_uses()) == sorted(known_uses())


def test_same_category_ids_keep_their_group_across_versions() -> None:
    groups: dict[str, str] = {}
    for aup in load_aups().values():
        for category in aup.categories:
            assert groups.setdefault(category.id, category.group) == category.group


# --- lookups and caching ----------------------------------------------------------------------------


def test_unknown_ids_raise_with_hint() -> None:
    with pytest.raises(RegistryError) as err:
        license_terms("llama4")
    assert "llama3.1" in (err.value.hint or "")
    with pytest.raises(RegistryError):
        aup_terms("nope-aup")
    with pytest.raises(RegistryError):
        license_for_family("llama-9")


def test_loaders_return_fresh_dicts() -> None:
    first = load_licenses()
    first.pop("llama2")
    assert "llama2" in load_licenses()
    assert load_licenses()["llama2"] is license_terms("llama2")


# --- validation of malformed data --------------------------------------------------------------------


@pytest.fixture
def license_data() -> dict[str, Any]:
    return copy.deepcopy(_raw("licenses", "llama3.1"))


@pytest.fixture
def aup_data() -> dict[str, Any]:
    return copy.deepcopy(_raw("aup", "llama3.2-aup"))


def test_parse_license_round_trip(license_data: dict[str, Any]) -> None:
    assert parse_license(license_data) == license_terms("llama3.1")


def test_mau_threshold_and_date_come_together(license_data: dict[str, Any]) -> None:
    del license_data["mau_threshold"]  # a license without an MAU clause drops both (Llama 1)
    with pytest.raises(DataFileError, match="together"):
        parse_license(license_data, "licenses/llama3.1.toml")


@pytest.mark.parametrize("key", ["id", "title", "family", "release_date", "aup", "summary"])
def test_missing_license_key(license_data: dict[str, Any], key: str) -> None:
    del license_data[key]
    with pytest.raises(DataFileError) as err:
        parse_license(license_data, "licenses/llama3.1.toml")
    assert (err.value.file, err.value.fields) == ("licenses/llama3.1.toml", [key])
    assert err.value.entry == ("license" if key == "id" else "license llama3.1")
    assert err.value.message.endswith(f"{key}: missing (a required key)")


@pytest.mark.parametrize("key", ["text_sha256", "url", "attribution", "derivative_name_prefix"])
def test_optional_license_keys_may_be_absent(license_data: dict[str, Any], key: str) -> None:
    license_data.pop(key, None)
    assert getattr(parse_license(license_data), key) is None


def test_unknown_license_key(license_data: dict[str, Any]) -> None:
    license_data["royalties"] = True
    with pytest.raises(DataFileError, match="royalties: unknown key") as err:
        parse_license(license_data)
    assert "mau_threshold" in (err.value.hint or "")


@pytest.mark.parametrize(("key", "value"), [
    ("mau_threshold", "700M"),
    ("mau_threshold", True),
    ("mau_threshold", 0),
    ("release_date", "2024-07-23"),
    ("outputs_may_train_other_models", "yes"),
    ("family", []),
    ("languages", ["English", "English"]),
    ("url", "http://example.com/license"),
    ("text_sha256", "abc"),
    ("summary", ["one", "two"]),
    ("summary", ["one\ntwo", "three", "four"]),
    ("outputs_may_train_other_models", False),  # a condition without permission
    ("mau_measured_on", dt.date(2025, 1, 1)),
    ("id", "Llama 3.1"),
])
def test_bad_license_values(license_data: dict[str, Any], key: str, value: Any) -> None:
    license_data[key] = value
    with pytest.raises(DataFileError) as err:
        parse_license(license_data, "licenses/llama3.1.toml")
    named = "outputs_training_condition" if value is False else key  # a condition without permission
    assert err.value.fields[0].split("[")[0] == named
    assert err.value.message.startswith(f"licenses/llama3.1.toml, {err.value.entry}: {err.value.fields[0]}: ")


def test_text_sha256_accepted_when_filled(license_data: dict[str, Any]) -> None:
    license_data["text_sha256"] = "0" * 64
    assert parse_license(license_data).text_sha256 == "0" * 64
    license_data["text_sha256"] = ""
    assert parse_license(license_data).text_sha256 is None


def test_eu_restriction_needs_patterns(license_data: dict[str, Any]) -> None:
    license_data["eu_multimodal_restriction"] = True
    with pytest.raises(RegistryError, match="multimodal_variants"):
        parse_license(license_data)


def test_cross_checks() -> None:
    licenses = list(load_licenses().values())
    aups = load_aups()
    assert set(check_licenses(licenses, aups)) == set(load_licenses())
    with pytest.raises(RegistryError, match="unknown aup"):
        check_licenses([replace(licenses[0], aup="missing-aup")], aups)
    twin = replace(license_terms("llama3"), id="llama3-copy")
    with pytest.raises(RegistryError, match="covered by both"):
        check_licenses([license_terms("llama3"), twin], aups)
    with pytest.raises(RegistryError, match="defined twice"):
        check_licenses([license_terms("llama3"), license_terms("llama3")], aups)


def test_cross_check_errors_name_file_entry_and_field() -> None:
    with pytest.raises(DataFileError) as err:
        check_licenses([replace(license_terms("llama2"), aup="missing-aup")], load_aups())
    e = err.value
    assert (e.file, e.entry, e.fields) == ("licenses/llama2.toml", "license llama2", ["aup"])
    assert "llama2-aup" in (err.value.hint or "")


def test_parse_aup_round_trip(aup_data: dict[str, Any]) -> None:
    assert parse_aup(aup_data) == aup_terms("llama3.2-aup")


def test_certifiable_category_is_refused(aup_data: dict[str, Any]) -> None:
    aup_data["category"][0]["certifiable"] = True
    with pytest.raises(RegistryError, match="certifiable") as err:
        parse_aup(aup_data)
    assert "certification" in (err.value.hint or "")


@pytest.mark.parametrize(("change", "match"), [
    (lambda d: d["category"][0].update(group="rude"), "category[0].group: input should be"),
    (lambda d: d["category"][0].update(severity="high"), "category[0].severity: unknown key"),
    (lambda d: d["category"][0].pop("description"), "category[0].description: missing"),
    (lambda d: d["category"][0].update(id="Violence Terrorism"), "category[0].id: must be a snake_case id"),
    (lambda d: d["category"].append(dict(d["category"][0])), "category: duplicate"),
    (lambda d: d["allowed_uses"].append("spam"), "allowed_uses: ids ['spam'] are both allowed"),
    (lambda d: d.update(category=[]), "category: list should have at least 1 item"),
    (lambda d: d.pop("allowed_uses"), "allowed_uses: missing"),
    (lambda d: d.update(extra="x"), "extra: unknown key"),
])
def test_bad_aup_data(aup_data: dict[str, Any], change: Any, match: str) -> None:
    change(aup_data)
    with pytest.raises(DataFileError, match=re.escape(f"aup/x.toml, aup llama3.2-aup: {match}")):
        parse_aup(aup_data, "aup/x.toml")

"""The license rules over HTTP, in the license JSON, through the CLI, and at hub import."""

from __future__ import annotations

from pathlib import Path

import httpx
from hubtest import Hub, error_code, init_hub, run_cli

from llamahub import derivatives
from llamahub.registry import _builtin


def test_license_json_carries_the_rules(hub: Hub) -> None:
    body = httpx.get(f"{hub.url}/api/licenses/llama3").json()
    assert body["outputs_may_train_other_models"] is False
    assert body["attribution"] == "Built with Meta Llama 3" and body["derivative_name_prefix"] == "Llama 3"
    assert body["languages"] == ["English"] and body["clauses"]["outputs"] == "1.b.v"
    listed = {x["id"]: x for x in httpx.get(f"{hub.url}/api/licenses").json()["licenses"]}
    assert listed["llama3.1"]["outputs_may_train_other_models"] is True
    assert "Portuguese" in listed["llama3.1"]["languages"]


def test_the_three_questions_of_the_issue_over_http(hub: Hub) -> None:
    ask = hub.client()
    outputs = ask.get("/api/license-check", params={"question": "outputs", "variant": "llama-3-8b"}).json()
    assert (outputs["allowed"], outputs["clause"], outputs["license"]) == (False, "1.b.v", "llama3")
    named = ask.get("/api/license-check",
                    params={"question": "name", "variant": "llama-3-70b", "name": "Orca Helper"}).json()
    assert (named["allowed"], named["suggestion"]) == (False, "Llama 3 Orca Helper")
    assert any("Built with Meta Llama 3" in o for o in named["obligations"])
    lang = ask.get("/api/license-check",
                   params={"question": "language", "variant": "llama-2-13b", "language": "Portuguese"}).json()
    assert lang["allowed"] and "English only" in lang["note"] and lang["clause"] == "model card"


def test_bad_questions_are_typed_4xx(hub: Hub) -> None:
    ask = hub.client()
    missing = ask.get("/api/license-check", params={"question": "name", "variant": "llama-3-8b"})
    assert missing.status_code == 400 and error_code(missing) == "missing_name"
    unknown = ask.get("/api/license-check", params={"question": "outputs", "variant": "llama-9-1b"})
    assert unknown.status_code == 404
    wrong = ask.get("/api/license-check", params={"question": "colour", "variant": "llama-3-8b"})
    assert wrong.status_code == 422


def test_cli_license_check_and_show() -> None:
    no = run_cli("license", "check", "llama-3-70b", "--name", "Orca Helper")
    assert no.returncode == 1 and "no:" in no.stdout and "Llama 3 Orca Helper" in no.stdout
    assert "clause 1.b.i" in no.stdout
    yes = run_cli("license", "check", "llama-3.1-8b", "--train-other")
    assert yes.returncode == 0 and "Built with Llama" in yes.stdout
    lang = run_cli("license", "check", "llama-2-13b", "--language", "Portuguese")
    assert lang.returncode == 0 and "note:" in lang.stdout and "English only" in lang.stdout
    none = run_cli("license", "check", "llama-2-13b")
    assert none.returncode != 0 and "exactly one question" in none.stderr
    show = run_cli("license", "show", "llama3")
    assert show.returncode == 0
    assert "Outputs may train other models: no" in show.stdout and "[clause 1.b.v]" in show.stdout
    assert "Derivative names must begin with: Llama 3" in show.stdout


def test_hub_import_refuses_a_badly_named_derivative(tmp_path: Path) -> None:
    base = _builtin().resolve("llama-3-8b-instruct")
    tiny = _builtin().resolve("llama-debug-3.1-instruct").arch
    for name in ("orca-helper", "llama-3-orca-helper"):  # a record written by hand or by an old llamahub
        derivatives.write_record(name, derivatives.derived_variant(name, base, tiny),
                                 {"base": base.name, "method": "lora"})
    data = tmp_path / "hub"
    init_hub(data, seed=False)
    (tmp_path / "empty").mkdir()
    bad = run_cli("hub", "import", str(tmp_path / "empty"), "--variant", "orca-helper", "--data", str(data))
    assert bad.returncode != 0 and "derivative" in bad.stderr and "llama-3-orca-helper" in bad.stderr
    good = run_cli("hub", "import", str(tmp_path / "empty"), "--variant", "llama-3-orca-helper",
                   "--data", str(data))
    assert good.returncode != 0 and "derivative" not in good.stderr  # refused later: the folder is empty

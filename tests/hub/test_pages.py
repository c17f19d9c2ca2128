"""The enterprise web pages in a real browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
from hubtest import NO_RATE_LIMITS, Hub, MakeUser, serving

OVER = 800_000_000


def sign_in(browser: Any, url: str, token: str) -> Any:
    page = browser.new_context().new_page()
    page.goto(url)
    page.fill("input[name=token]", token)
    page.click("button:has-text('Sign in')")
    return page


def test_request_review_grant_and_revoke_in_the_browser(hub: Hub, make_user: MakeUser, browser: Any) -> None:
    user = make_user(mau=OVER)
    page = sign_in(browser, f"{hub.url}/enterprise", user.token)
    assert f"Signed in as {user.email}" in page.inner_text("body")
    page.check("input[name=family][value='llama-debug']")
    assert page.input_value("input[name=mau]") == str(OVER)  # from the declared profile
    page.fill("textarea[name=note]", "<script>alert(1)</script> a support bot")
    page.click("button:has-text('Submit request')")
    assert "an operator reviews it" in page.inner_text(".ok")
    row = page.locator("tr[data-id^='er_']")
    request_id = row.get_attribute("data-id")
    assert request_id and row.locator(".status").inner_text() == "pending"

    dialogs: list[Any] = []
    admin = sign_in(browser, f"{hub.url}/admin/enterprise", hub.admin_token)
    admin.on("dialog", lambda dialog: dialogs.append(dialog))
    admin.goto(f"{hub.url}/admin/enterprise")
    card = admin.locator(f"section[data-id='{request_id}']")
    assert "<script>alert(1)</script> a support bot" in card.inner_text()  # shown as text, never run
    assert user.organisation in card.inner_text()
    card.locator("input[name=note]").fill("welcome aboard")
    card.locator("button:has-text('Approve')").click()
    decided = admin.locator(f"tr[data-id='{request_id}']")
    assert decided.locator(".status").inner_text() == "approved" and "welcome aboard" in decided.inner_text()
    grant_id = re.search(r"g_[0-9a-f]+", decided.inner_text()).group(0)  # type: ignore[union-attr]
    assert "request.approve" in admin.inner_text("body") and dialogs == []

    page.goto(f"{hub.url}/enterprise")
    assert page.locator(f"tr[data-id='{request_id}'] .status").inner_text() == "approved"
    assert grant_id in page.inner_text("body")
    user.link(variant="llama-debug-2-chat")  # the grant lets the organisation past the threshold

    admin.locator(f"tr[data-id='{grant_id}'] button:has-text('Revoke')").click()
    assert "revoked" in admin.locator(f"tr[data-id='{grant_id}']").inner_text()
    user.link(expect=403, variant="llama-debug-2-chat")


def test_deny_and_withdraw_in_the_browser(hub: Hub, make_user: MakeUser, browser: Any) -> None:
    user = make_user(mau=OVER)
    page = sign_in(browser, f"{hub.url}/enterprise", user.token)
    for family in ("llama-2", "llama-3"):
        page.check(f"input[name=family][value='{family}']")
        page.click("button:has-text('Submit request')")
    ids = page.locator("tr[data-id^='er_']").evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert len(ids) == 2
    page.locator(f"tr[data-id='{ids[0]}'] button:has-text('Withdraw')").click()
    assert page.locator(f"tr[data-id='{ids[0]}'] .status").inner_text() == "withdrawn"

    admin = sign_in(browser, f"{hub.url}/admin/enterprise", hub.admin_token)
    card = admin.locator(f"section[data-id='{ids[1]}']")
    card.locator("input[name=reason]").fill("tell us more about the audience")
    card.locator("button:has-text('Deny')").click()
    assert admin.locator(f"tr[data-id='{ids[1]}'] .status").inner_text() == "denied"
    page.goto(f"{hub.url}/enterprise")
    row = page.locator(f"tr[data-id='{ids[1]}']")
    assert row.locator(".status").inner_text() == "denied" and "tell us more" in row.inner_text()
    assert row.locator("button").count() == 0  # nothing left to withdraw


def test_wrong_tokens_and_bad_forms_are_refused_with_the_reason(hub: Hub, make_user: MakeUser,
                                                                 browser: Any) -> None:
    user = make_user(mau=OVER)
    page = sign_in(browser, f"{hub.url}/admin/enterprise", user.token)  # a user token is not the admin's
    assert "that is not the admin token" in page.inner_text(".error")
    page = sign_in(browser, f"{hub.url}/enterprise", "lhu_not-a-token")
    assert "not a live user token" in page.inner_text(".error")
    page = sign_in(browser, f"{hub.url}/enterprise", user.token)
    page.click("button:has-text('Submit request')")  # no family ticked
    assert "choose at least one family" in page.inner_text(".error")
    assert user.http.get("/api/enterprise/requests").json()["requests"] == []


def test_forms_from_another_site_and_forged_notices_are_refused(hub: Hub, make_user: MakeUser) -> None:
    user = make_user(mau=OVER)
    cookies = {"llamahub_token": user.token}
    form = {"family": "llama-2", "mau": str(OVER), "note": ""}
    forged = httpx.post(f"{hub.url}/enterprise/requests", data=form, cookies=cookies,
                        headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403
    assert user.http.get("/api/enterprise/requests").json()["requests"] == []
    spoof = httpx.get(f"{hub.url}/enterprise", params={"notice": "er_<b>fake</b>"}, cookies=cookies)
    assert spoof.status_code == 200 and "fake" not in spoof.text
    same_site = httpx.post(f"{hub.url}/enterprise/requests", data=form, cookies=cookies,
                           headers={"Origin": hub.url})
    assert same_site.status_code == 303
    assert len(user.http.get("/api/enterprise/requests").json()["requests"]) == 1


def test_a_hub_behind_a_proxy_takes_forms_from_its_public_address(hub: Hub, make_user: MakeUser,
                                                                   tmp_path: Path) -> None:
    with serving(hub.data, hub.admin_token, "--public-url", "https://hub.example.test", *NO_RATE_LIMITS,
                 log=tmp_path / "proxied-hub.log") as (proxied, _):
        url = proxied.url
        user = make_user(mau=OVER)
        form, cookies = {"family": "llama-2", "mau": str(OVER)}, {"llamahub_token": user.token}
        public = httpx.post(f"{url}/enterprise/requests", data=form, cookies=cookies,
                            headers={"Origin": "https://hub.example.test"})
        assert public.status_code == 303
        elsewhere = httpx.post(f"{url}/enterprise/requests", data={"family": "llama-3", "mau": str(OVER)},
                               cookies=cookies, headers={"Origin": "https://other.example.test"})
        assert elsewhere.status_code == 403
        assert [r["families"] for r in user.http.get("/api/enterprise/requests").json()["requests"]] == [
            ["llama-2"]]

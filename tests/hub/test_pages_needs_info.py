"""The "needs information" round trip on the enterprise web pages, in a real browser (Debian's
chromium driven by Playwright): the operator asks, the requester reads the question and answers
it on the page, the operator sees the answer and decides."""

from __future__ import annotations

from typing import Any

import httpx
from hubtest import Hub, MakeUser
from test_pages import OVER, sign_in

QUESTION = "Which <b>products</b> will use it?"
ANSWER = "A support bot for our own customers"


def _submit(browser: Any, hub: Hub, token: str) -> tuple[Any, str]:
    page = sign_in(browser, f"{hub.url}/enterprise", token)
    page.check("input[name=family][value='llama-debug']")
    page.click("button:has-text('Submit request')")
    request_id = page.locator("tr[data-id^='er_']").get_attribute("data-id")
    assert request_id
    return page, request_id


def test_question_answer_and_decision_in_the_browser(hub: Hub, make_user: MakeUser, browser: Any) -> None:
    user = make_user(mau=OVER)
    page, request_id = _submit(browser, hub, user.token)
    assert page.locator(f"tr[data-id='{request_id}'] .question").count() == 0

    admin = sign_in(browser, f"{hub.url}/admin/enterprise", hub.admin_token)
    card = admin.locator(f"section[data-id='{request_id}']")
    card.locator("input[name=question]").fill(QUESTION)
    card.locator("button:has-text('Ask for information')").click()
    card = admin.locator(f"section[data-id='{request_id}']")  # still open, now waiting
    assert card.locator(".status").inner_text() == "needs_info"
    assert QUESTION in card.locator(".question").inner_text()
    assert "Waiting for the requester" in card.inner_text()
    assert "request.needs_info" in admin.inner_text("body")

    page.goto(f"{hub.url}/enterprise")
    row = page.locator(f"tr[data-id='{request_id}']")
    assert row.locator(".status").inner_text() == "needs_info"
    assert QUESTION in row.locator(".question").inner_text()  # shown as text, the tags escaped
    row.locator("textarea[name=answer]").fill(ANSWER)
    row.locator("button:has-text('Send answer')").click()
    assert "back with the reviewer" in page.inner_text(".ok")
    row = page.locator(f"tr[data-id='{request_id}']")
    assert row.locator(".status").inner_text() == "pending" and ANSWER in row.locator(".answer").inner_text()
    assert row.locator("textarea").count() == 0  # answered: no form left

    mine = user.http.get("/api/enterprise/requests").json()["requests"]
    assert [(r["id"], r["status"], r["info_request"], r["info_answer"]) for r in mine] == [
        (request_id, "pending", QUESTION, ANSWER)]

    admin.goto(f"{hub.url}/admin/enterprise")
    card = admin.locator(f"section[data-id='{request_id}']")
    assert card.locator(".status").inner_text() == "pending"
    assert ANSWER in card.locator(".answer").inner_text() and "Waiting" not in card.inner_text()
    assert "request.answer" in admin.inner_text("body")
    card.locator("button:has-text('Approve')").click()
    assert admin.locator(f"tr[data-id='{request_id}'] .status").inner_text() == "approved"
    user.link(variant="llama-debug-2-chat")  # the grant works


def test_answers_that_cannot_be_taken_are_refused(hub: Hub, make_user: MakeUser, browser: Any) -> None:
    user, other = make_user(mau=OVER), make_user(mau=OVER)
    page, request_id = _submit(browser, hub, user.token)
    cookies = {"llamahub_token": user.token}
    url = f"{hub.url}/enterprise/requests/{request_id}/answer"

    early = httpx.post(url, data={"answer": "unasked"}, cookies=cookies, headers={"Origin": hub.url})
    assert early.status_code == 409 and "has no open question" in early.text  # nobody asked yet

    hub.admin().post(f"/api/admin/enterprise/requests/{request_id}/needs-info",
                   json={"question": "Who are the users?"}).raise_for_status()
    forged = httpx.post(url, data={"answer": "from elsewhere"}, cookies=cookies,
                        headers={"Origin": "http://evil.example"})
    assert forged.status_code == 403
    someone_else = httpx.post(url, data={"answer": "not mine"}, cookies={"llamahub_token": other.token},
                              headers={"Origin": hub.url})
    assert someone_else.status_code == 404
    empty = httpx.post(url, data={"answer": "  "}, cookies=cookies, headers={"Origin": hub.url})
    assert empty.status_code == 400 and "the answer is empty" in empty.text
    signed_out = httpx.post(url, data={"answer": "x"}, headers={"Origin": hub.url})
    assert signed_out.status_code == 303

    (mine,) = user.http.get("/api/enterprise/requests").json()["requests"]
    assert (mine["status"], mine["info_answer"]) == ("needs_info", None)  # none of them landed
    page.goto(f"{hub.url}/enterprise")
    assert page.locator(f"tr[data-id='{request_id}'] textarea[name=answer]").count() == 1

"""The web app in a real Chromium (Debian's, never a downloaded one) against real API processes, a
Celery worker, Redis, the database and the SMTP sink: what people do on the board, the bell and the
outbox. Screenshots land in backend/.test-artifacts/."""

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI, Caller
from tests.test_emails import wait_until

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
# The machine's network is closed: nothing that phones home.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / ".test-artifacts"
PASSWORD = "correct horse battery"  # conftest's make_user
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 375, "height": 740}


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Per module, not per session: Playwright's sync API runs an event loop on this thread while it is
    open, and later tests call asyncio.run() (the parametrized database interleaves the modules)."""
    if not CHROMIUM.exists():
        message = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    os.environ["PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD"] = "1"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Screen:
    """One user's browser tab, and every console error or uncaught exception it showed."""

    def __init__(self, browser, base_url: str, viewport: dict[str, int] = DESKTOP) -> None:
        self.context = browser.new_context(viewport=viewport, base_url=base_url)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def sign_in(self, user: Caller) -> "Screen":
        from playwright.sync_api import expect

        self.page.goto("/#/signin")
        self.page.get_by_label("Email").fill(user.email)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign in").click()
        expect(self.page.locator(".board")).to_be_visible()
        expect(self.badge).to_have_attribute("data-count", re.compile(r"\d+"))
        return self

    @property
    def badge(self):
        return self.page.locator(".bell .badge")

    def card(self, task_id: int):
        return self.page.locator(f'.card[data-task-id="{task_id}"]')

    def column(self, status: str):
        return self.page.locator(f'.column[data-status="{status}"]')

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"{name}.png")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def screens(browser, api_servers) -> Iterator[object]:
    opened: list[Screen] = []

    def open_screen(viewport: dict[str, int] = DESKTOP) -> Screen:
        opened.append(Screen(browser, api_servers[0].url, viewport))
        return opened[-1]

    yield open_screen
    for screen in opened:
        screen.close()


@pytest.fixture
def team(client, make_user, make_org, worker, sink):
    """Alice owns the organization, Bob is a member; a task Alice reported, Bob watches."""
    alice, bob = make_user("alice"), make_user("bob")
    org_id = make_org(alice, bob)
    wait_until(lambda: len(sink.messages) == 1, message="Bob's invitation email")
    sink.messages.clear()
    task = client.post(
        f"/api/orgs/{org_id}/tasks",
        json={"title": "Ship the bell", "watcher_ids": [bob.id]},
        headers=alice.headers,
    ).json()
    return org_id, task, alice, bob


def status_of(client, task: dict, user: Caller) -> str:
    return client.get(f"/api/tasks/{task['id']}", headers=user.headers).json()["status"]


def test_a_drag_lights_the_watchers_bell_and_the_inbox_reads_it(client, team, screens, sink):
    from playwright.sync_api import expect

    _org_id, task, alice, bob = team
    a, b = screens().sign_in(alice), screens().sign_in(bob)
    expect(b.badge).to_have_text("0")

    with a.page.expect_response(lambda r: r.request.method == "PATCH" and r.ok):
        a.card(task["id"]).drag_to(a.column("done"))
    moved_at = time.monotonic()
    expect(a.column("done").locator(f'[data-task-id="{task["id"]}"]')).to_be_visible()
    expect(b.badge).to_have_text("1", timeout=2000)  # live, no reload
    assert time.monotonic() - moved_at < 2
    assert status_of(client, task, bob) == "done"
    expect(b.card(task["id"])).to_be_visible()
    b.shot("board-desktop")

    b.page.get_by_role("button", name=re.compile("^Notifications")).click()
    note = b.page.locator(".notifications li.unread").first
    expect(note).to_contain_text("Ship the bell")
    b.shot("inbox-desktop")
    b.page.set_viewport_size(PHONE)
    b.shot("inbox-375")
    note.get_by_role("button", name=re.compile("^Mark .* read$")).click()
    expect(b.badge).to_have_text("0")
    expect(b.page.locator(".notifications li.unread")).to_have_count(0)
    b.page.keyboard.press("Escape")
    expect(b.page.locator(".inbox")).to_have_count(0)
    b.card(task["id"]).scroll_into_view_if_needed()  # the columns scroll sideways on a phone
    b.shot("board-375")

    wait_until(lambda: any(m.rcpt_tos == [bob.email] for m in sink.messages), message="Bob's email")
    [mail] = [m.message for m in sink.messages if m.rcpt_tos == [bob.email]]
    assert "Ship the bell" in mail["Subject"] and "done" in mail["Subject"]
    assert a.errors == [] and b.errors == []


def test_keyboard_moves_and_a_refused_move_rolls_back_with_a_message(client, team, screens):
    from playwright.sync_api import expect

    _org_id, task, alice, _bob = team
    a = screens().sign_in(alice)
    card = a.card(task["id"])
    card.focus()
    with a.page.expect_response(lambda r: r.request.method == "PATCH" and r.ok):
        a.page.keyboard.press("ArrowRight")
    expect(a.column("in_progress").locator(f'[data-task-id="{task["id"]}"]')).to_be_focused()
    assert status_of(client, task, alice) == "in_progress"

    # The card's menu, by keyboard only: Tab to "Move", open it, down to "Done".
    a.page.keyboard.press("Tab")
    a.page.keyboard.press("Tab")
    expect(card.get_by_role("button", name=re.compile("^Move"))).to_be_focused()
    a.page.keyboard.press("Enter")
    expect(card.get_by_role("menuitem", name="To do")).to_be_focused()
    for _ in range(2):  # To do, In review, Done
        a.page.keyboard.press("ArrowDown")
    expect(card.get_by_role("menuitem", name="Done")).to_be_focused()
    with a.page.expect_response(lambda r: r.request.method == "PATCH" and r.ok):
        a.page.keyboard.press("Enter")
    expect(a.column("done").locator(f'[data-task-id="{task["id"]}"]')).to_be_visible()
    assert status_of(client, task, alice) == "done"

    # Herald refuses the next move (500), then cannot be reached: the card goes back each time.
    def refuse(route, request) -> None:
        if request.method == "PATCH":
            route.fulfill(status=500, json={"detail": "the database is on fire"})
        else:
            route.continue_()

    a.page.route(f"**/api/tasks/{task['id']}", refuse)
    card.focus()
    a.page.keyboard.press("ArrowLeft")
    expect(a.page.locator(".toast.error")).to_contain_text("Could not move “Ship the bell” to In review")
    expect(a.page.locator(".toast.error")).to_contain_text("the database is on fire")
    expect(a.column("done").locator(f'[data-task-id="{task["id"]}"]')).to_be_visible()
    a.page.unroute(f"**/api/tasks/{task['id']}")
    a.page.route(f"**/api/tasks/{task['id']}", lambda route: route.abort("connectionrefused"))
    a.card(task["id"]).drag_to(a.column("todo"))
    expect(a.page.locator(".toast.error").last).to_contain_text("Herald cannot be reached")
    expect(a.column("done").locator(f'[data-task-id="{task["id"]}"]')).to_be_visible()
    assert status_of(client, task, alice) == "done"


def test_the_outbox_shows_sent_and_failed_emails_and_retries_one(client, team, screens, sink):
    from playwright.sync_api import expect

    org_id, task, alice, bob = team
    assert client.patch(
        f"/api/tasks/{task['id']}", json={"status": "in_review"}, headers=bob.headers
    ).is_success
    wait_until(lambda: len(sink.messages) == 1, message="Alice's email")
    sink.replies.append("550 5.1.1 No such user here")
    assert client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=bob.headers).is_success
    emails = lambda: client.get(f"/api/orgs/{org_id}/emails", headers=alice.headers).json()  # noqa: E731
    wait_until(lambda: emails()["counts"].get("failed") == 1, message="the refused email failed")

    a = screens().sign_in(alice)
    a.page.get_by_role("link", name="Admin").click()
    a.page.get_by_role("tab", name="Outbox").click()
    rows = a.page.locator("table.outbox tbody tr")
    sent = rows.filter(has_text="todo → in_review")
    expect(sent).to_contain_text("sent")
    expect(sent).to_contain_text("1/")
    a.page.get_by_label("Status").select_option("failed")
    expect(rows).to_have_count(1)
    failed = rows.first
    expect(failed).to_contain_text("in_review → done")
    expect(failed.locator(".error-text")).to_contain_text("550")
    expect(failed.locator(".error-text")).to_contain_text("No such user")
    a.shot("outbox-desktop")
    failed.get_by_role("button", name=re.compile("^Retry")).click()
    expect(a.page.locator(".toast")).to_contain_text("will be sent again")
    wait_until(lambda: len(sink.messages) == 2, message="the retried email delivered")
    a.page.get_by_label("Status").select_option("sent")
    expect(rows).to_have_count(3)  # the invitation, the in_review and the retried email
    assert a.errors == []


def test_the_bell_catches_up_after_the_stream_is_cut(client, team, screens, api_servers):
    from playwright.sync_api import expect

    _org_id, task, alice, bob = team
    b = screens().sign_in(bob)
    expect(b.badge).to_have_text("0")
    server = api_servers[0]
    server.stop()  # B's stream ends with the process
    try:
        change = {"status": "in_progress"}
        moved = client.patch(f"/api/tasks/{task['id']}", json=change, headers=alice.headers)
        assert moved.status_code == 200, moved.text
    finally:
        server.start()
    expect(b.badge).to_have_text("1", timeout=15_000)
    b.page.get_by_role("button", name=re.compile("^Notifications")).click()
    expect(b.page.locator(".notifications li.unread").first).to_contain_text("Ship the bell")
    # and the stream is live again: the next change arrives without polling's delay
    assert client.patch(f"/api/tasks/{task['id']}", json={"status": "done"}, headers=alice.headers).is_success
    expect(b.badge).to_have_text("2", timeout=2000)


def test_every_screen_loads_without_console_errors(client, team, screens):
    from playwright.sync_api import expect

    org_id, task, alice, _bob = team
    client.post(f"/api/orgs/{org_id}/announcements", json={"title": "Hello"}, headers=alice.headers)
    signed_out = screens(PHONE)
    for path, heading in [
        ("signin", "Sign in"),
        ("signup", "Create an account"),
        ("verify", "Confirm your address"),
        ("reset", "Reset your password"),
    ]:
        signed_out.page.goto(f"/#/{path}")
        expect(signed_out.page.get_by_role("heading", name=heading)).to_be_visible()
    assert signed_out.errors == []

    a = screens().sign_in(alice)
    page = a.page
    page.goto(f"/tasks/{task['id']}")  # where emails link: the app's task drawer
    expect(page.locator(".drawer .history li").first).to_contain_text("created the task")
    page.keyboard.press("Escape")
    page.get_by_role("button", name="New task").click()
    expect(page.get_by_role("dialog")).to_be_visible()
    page.keyboard.press("Escape")
    page.get_by_role("button", name=re.compile("^Notifications")).click()
    expect(page.locator(".notifications li").first).to_contain_text("Hello")
    page.keyboard.press("Escape")
    page.get_by_role("link", name="Organizations").click()
    expect(page.get_by_text("No invitations are waiting for you.")).to_be_visible()
    page.get_by_role("link", name="Admin").click()
    members, invitations = page.locator(".rows").first, page.locator(".rows").nth(1)
    expect(members.locator("li")).to_have_count(2)
    expect(invitations).to_contain_text("bob@example.com as member")
    expect(invitations).to_contain_text("accepted")
    for tab, shown in [("Announcements", "Every member gets it"), ("Outbox", "bob@example.com")]:
        page.get_by_role("tab", name=tab).click()
        expect(page.get_by_role("tabpanel")).to_contain_text(shown)
    assert a.errors == []


def test_sign_up_confirm_reset_the_password_and_start_an_organization(db, worker, sink, screens):
    from playwright.sync_api import expect

    from tests.test_signup import mail_to

    page = screens(PHONE).page
    page.goto("/")
    page.get_by_role("link", name="Create an account").click()
    page.get_by_label("Name").fill("Erin")
    page.get_by_label("Email").fill("erin@example.com")
    page.get_by_label("Password").fill("first password")
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator(".notice")).to_contain_text("check your inbox")

    link = re.search(r"http\S+/#/verify\?token=\S+", mail_to(sink, "erin@example.com", "Confirm")).group(0)
    page.goto(link[link.index("/#/") :])  # the emailed link's page (on this test's server), which
    # confirms only with its button
    expect(page.get_by_label("The link or code from the email")).not_to_have_value("")
    page.get_by_role("button", name="Confirm", exact=True).click()
    expect(page.locator(".notice")).to_contain_text("You can sign in now")

    page.goto("/#/reset")
    page.get_by_label("Email", exact=True).fill("erin@example.com")
    page.get_by_role("button", name="Email me a code").click()
    expect(page.locator(".notice")).to_be_visible()
    code = re.search(r"^(\S{40,})\s*$", mail_to(sink, "erin@example.com", "Reset"), re.MULTILINE).group(1)
    page.get_by_label("Code from the email").fill(code)
    page.get_by_label("New password").fill("second password")
    page.get_by_role("button", name="Set the new password").click()
    expect(page.locator(".notice").last).to_contain_text("Sign in with the new password")

    page.goto("/#/signin")
    page.get_by_label("Email").fill("erin@example.com")
    page.get_by_label("Password").fill("second password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("No invitations are waiting for you.")).to_be_visible()
    page.get_by_label("Name").fill("Erin's team")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="Erin's team")).to_be_visible()
    expect(page.get_by_text("No tasks yet")).to_be_visible()
    page.get_by_role("button", name="New task").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Title").fill("Invite the team")
    dialog.get_by_label("Assignee").select_option(label="Erin")
    dialog.get_by_role("button", name="Create").click()
    card = page.locator('.column[data-status="todo"] .card')
    expect(card).to_contain_text("Invite the team")
    expect(card).to_contain_text("Erin")
    expect(card).to_be_focused()


def test_the_task_drawer_edits_assigns_watches_and_shows_the_history(client, team, screens):
    from playwright.sync_api import expect

    _org_id, task, alice, bob = team
    a = screens().sign_in(alice)
    a.card(task["id"]).get_by_role("button", name="Ship the bell", exact=True).click()
    drawer = a.page.locator(".drawer")
    expect(drawer.locator(".history li")).to_have_count(1)  # created
    drawer.get_by_role("button", name="Watch", exact=True).click()
    expect(drawer.get_by_role("button", name="Unwatch")).to_be_visible()
    drawer.get_by_label("Title").fill("Ship the bell today")
    drawer.get_by_label("Assignee").select_option(label="Bob")
    drawer.get_by_role("button", name="Save").click()
    expect(a.page.locator(".toast").last).to_contain_text("Task saved")
    expect(drawer.locator(".history li").first).to_contain_text("Alice assigned it to Bob")
    expect(drawer.locator(".history")).to_contain_text(
        "renamed it from “Ship the bell” to “Ship the bell today”"
    )
    expect(drawer.locator(".history")).to_contain_text("Alice added Alice as a watcher")
    expect(a.card(task["id"])).to_contain_text("Ship the bell today")
    expect(a.card(task["id"])).to_contain_text("Watched by Alice, Bob")
    saved = client.get(f"/api/tasks/{task['id']}", headers=bob.headers).json()
    assert (saved["title"], saved["assignee_id"], set(saved["watcher_ids"])) == (
        "Ship the bell today", bob.id, {alice.id, bob.id},
    )  # fmt: skip
    a.page.keyboard.press("Escape")
    expect(drawer).to_have_count(0)
    assert a.errors == []


def test_an_invitation_sent_from_admin_is_accepted_and_another_declined(client, team, make_user, screens):
    from playwright.sync_api import expect

    _org_id, _task, alice, _bob = team
    carol = make_user("carol")
    other_org = client.post("/api/orgs", json={"name": "Other"}, headers=alice.headers).json()["id"]
    client.post(f"/api/orgs/{other_org}/members", json={"email": carol.email}, headers=alice.headers)

    a = screens().sign_in(alice)
    a.page.get_by_role("link", name="Admin").click()
    a.page.get_by_label("Email").fill(carol.email)
    a.page.get_by_label("Role").select_option("admin")
    a.page.get_by_role("button", name="Invite").click()
    expect(a.page.locator(".rows").nth(1)).to_contain_text("carol@example.com as admin")

    c = screens(PHONE)  # Carol belongs to no organization yet: she lands on Organizations
    c.page.goto("/#/signin")
    c.page.get_by_label("Email").fill(carol.email)
    c.page.get_by_label("Password").fill(PASSWORD)
    c.page.get_by_role("button", name="Sign in").click()
    invitations = c.page.locator('section[aria-labelledby="invitations-title"] .rows li')
    expect(invitations).to_have_count(2)
    invitations.filter(has_text="Other").get_by_role("button", name="Decline").click()
    expect(invitations).to_have_count(1)
    invitations.filter(has_text="Acme").get_by_role("button", name="Accept").click()
    expect(c.page.get_by_role("heading", name="Acme")).to_be_visible()
    expect(c.page.get_by_role("link", name="Admin")).to_be_visible()  # she joined as an admin
    roles = {o["name"]: o["role"] for o in client.get("/api/orgs", headers=carol.headers).json()}
    assert roles == {"Acme": "admin"}
    assert a.errors == [] and c.errors == []

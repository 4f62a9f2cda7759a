"""The preferences screen, the organization defaults in admin and the drawer's mute, in a real Chromium
against the real API process: what each choice does to the outbox and the notifications written."""

from sqlalchemy import func, select

from src.db import SessionLocal
from src.emails.models import EmailQueue
from src.notifications.models import Notification
from tests.test_web import PHONE, browser, screens, team  # noqa: F401 (fixtures)

# The table's cell for one event type and channel.
CELL = '.choices li[data-event-type="{}"] .choice[data-channel="{}"]'


def status_emails_to(user) -> int:
    with SessionLocal() as session:
        return session.scalar(
            select(func.count())
            .select_from(EmailQueue)
            .where(EmailQueue.to_email == user.email, EmailQueue.dedupe_key.like("task-event:%"))
        )


def notifications_of(user) -> int:
    with SessionLocal() as session:
        return session.scalar(
            select(func.count()).select_from(Notification).where(Notification.recipient_id == user.id)
        )


def move(client, task: dict, status: str, by) -> None:
    response = client.patch(f"/api/tasks/{task['id']}", json={"status": status}, headers=by.headers)
    assert response.status_code == 200, response.text


def test_email_off_in_preferences_queues_nothing_and_reset_brings_it_back(client, team, screens):  # noqa: F811
    from playwright.sync_api import expect

    _org_id, task, alice, bob = team
    b = screens().sign_in(bob)
    b.page.get_by_role("link", name="Preferences").click()
    email = b.page.locator(CELL.format("task_status_changed", "email"))
    expect(email.locator(".source")).to_have_text("default")
    expect(email.get_by_role("button", name="Reset")).to_have_count(0)
    with b.page.expect_response(lambda r: r.request.method == "PUT" and r.ok):
        b.page.get_by_label("Task status changes: Email").select_option("off")
    expect(email.locator(".source")).to_have_text("your choice")
    assert client.get("/api/me/preferences", headers=bob.headers).json()["choices"] == {
        "task_status_changed": {"email": "off"}
    }

    move(client, task, "in_progress", alice)
    assert status_emails_to(bob) == 0

    b.page.get_by_label("Time zone").fill("Europe/Paris")
    b.page.get_by_label("Send my digest").select_option("daily")
    b.page.get_by_label("Local hour").select_option("7")
    b.page.get_by_role("button", name="Save the schedule").click()
    expect(b.page.locator(".toast").last).to_contain_text("Digest schedule saved")
    assert client.get("/api/me/preferences", headers=bob.headers).json()["digest"] == {
        "frequency": "daily", "hour": 7, "timezone": "Europe/Paris",
    }  # fmt: skip
    b.shot("preferences-desktop")
    b.page.set_viewport_size(PHONE)
    b.shot("preferences-375")
    assert b.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    email.get_by_role("button", name="Reset").focus()  # reachable and usable by keyboard
    with b.page.expect_response(lambda r: r.request.method == "PUT" and r.ok):
        b.page.keyboard.press("Enter")
    expect(email.locator(".source")).to_have_text("default")
    assert client.get("/api/me/preferences", headers=bob.headers).json()["choices"] == {}
    move(client, task, "done", alice)
    assert status_emails_to(bob) == 1
    assert b.errors == []


def test_a_task_muted_from_the_drawer_sends_nothing_to_who_muted_it(client, team, screens):  # noqa: F811
    from playwright.sync_api import expect

    org_id, task, alice, bob = team
    b = screens().sign_in(bob)
    b.card(task["id"]).get_by_role("button", name="Ship the bell", exact=True).click()
    drawer = b.page.locator(".drawer")
    drawer.get_by_role("button", name="Mute", exact=True).click()
    expect(drawer.get_by_role("button", name="Unmute")).to_have_attribute("aria-pressed", "true")
    assert client.get(f"/api/tasks/{task['id']}", headers=bob.headers).json()["muted"] is True
    assert client.get(f"/api/tasks/{task['id']}", headers=alice.headers).json()["muted"] is False
    listed = client.get(f"/api/orgs/{org_id}/tasks", headers=bob.headers).json()["items"]
    assert [t["muted"] for t in listed] == [True]

    notes_before = notifications_of(bob)
    move(client, task, "in_review", alice)
    assert status_emails_to(bob) == 0
    assert notifications_of(bob) == notes_before

    b.page.reload()  # the muted state comes back from the API
    drawer.get_by_role("button", name="Unmute").click()
    expect(drawer.get_by_role("button", name="Mute", exact=True)).to_have_attribute("aria-pressed", "false")
    move(client, task, "done", alice)
    assert status_emails_to(bob) == 1
    assert notifications_of(bob) == notes_before + 1
    assert b.errors == []


def test_an_org_default_set_in_admin_shows_on_a_members_screen(client, team, screens):  # noqa: F811
    from playwright.sync_api import expect

    org_id, _task, alice, bob = team
    a = screens().sign_in(alice)
    a.page.get_by_role("link", name="Admin").click()
    a.page.get_by_role("tab", name="Notification defaults").click()
    in_app = a.page.locator(CELL.format("task_status_changed", "in_app"))
    expect(in_app.locator(".source")).to_have_text("Herald's default")
    with a.page.expect_response(lambda r: r.request.method == "PUT" and r.ok):
        a.page.get_by_label("Task status changes: In the app").select_option("off")
    expect(in_app.locator(".source")).to_have_text("set for the organization")
    defaults = client.get(f"/api/orgs/{org_id}/notification-defaults", headers=alice.headers).json()
    assert defaults["defaults"]["task_status_changed"]["in_app"] == {"value": "off", "source": "organization"}

    b = screens(PHONE).sign_in(bob)
    b.page.goto("/#/preferences")
    cell = b.page.locator(CELL.format("task_status_changed", "in_app"))
    expect(cell.locator(".source")).to_have_text("organization default")
    expect(b.page.get_by_label("Task status changes: In the app")).to_have_value("off")
    expect(b.page.get_by_text("Always delivered: Announcements, Account email.")).to_be_visible()

    in_app.get_by_role("button", name="Reset").click()
    expect(in_app.locator(".source")).to_have_text("Herald's default")
    assert a.errors == [] and b.errors == []


def test_the_preferences_screen_shows_an_error_it_can_recover_from(team, screens):  # noqa: F811
    from playwright.sync_api import expect

    _org_id, _task, _alice, bob = team
    b = screens().sign_in(bob)
    b.page.route("**/api/me/preferences", lambda route: route.fulfill(status=503, json={"detail": "down"}))
    b.page.get_by_role("link", name="Preferences").click()
    expect(b.page.get_by_role("alert")).to_contain_text("Could not load your preferences: down")
    b.page.unroute("**/api/me/preferences")
    b.page.get_by_role("button", name="Try again").click()
    expect(b.page.get_by_label("Task status changes: Email")).to_have_value("immediate")

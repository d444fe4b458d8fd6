"""The web dashboard in a real browser (Debian's chromium driven by Playwright) against a real
daemon, real PostgreSQL and real SUMO: log in, start a session from the form and watch its
chart advance, pause and resume it, set a traffic light from the map, upload a template,
compare two sessions; step a stepped session, close and reopen an edge from the map, download a
CSV, drop a folder's files on the upload. Each page's screenshot is left in tmp/artifacts (DASHBOARD_ARTIFACTS).
Each page shown is also checked by axe-core (WCAG 2.1 A/AA, at 1280x800 and at a phone's 390x844
for the sessions list and a session), and the keyboard alone reaches what a mouse does."""

from __future__ import annotations

import asyncio
import base64
import re
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.harness.browser import assert_accessible, browser_context, screenshot_path
from tests.harness.daemon import make_token
from tests.harness.http import create_session, upload, wait_status

pytestmark = pytest.mark.slow


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _log_in(page: Page, url: str, token: str) -> None:
    await page.goto(url + "/")
    await expect(page.locator("#login")).to_be_visible()
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login")).to_be_hidden()


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 800}


async def _tab_to(page: Page, selector: str, limit: int = 60) -> int:
    """Presses Tab until the focused element matches `selector`; how many presses it took."""
    for presses in range(1, limit + 1):
        await page.keyboard.press("Tab")
        if await page.evaluate("s => document.activeElement?.matches(s) ?? false", selector):
            return presses
    focused = await page.evaluate("document.activeElement?.outerHTML.slice(0, 120)")
    raise AssertionError(f"{limit} Tabs did not reach {selector} (focus is on {focused})")


async def _assert_focus_visible(page: Page) -> None:
    """The focused element shows it: :focus-visible, with an outline at least 2 px wide."""
    ring = await page.evaluate(
        """() => {
            const el = document.activeElement, cs = getComputedStyle(el);
            return { visible: el.matches(":focus-visible"), style: cs.outlineStyle,
                     width: parseFloat(cs.outlineWidth), html: el.outerHTML.slice(0, 120) };
        }"""
    )
    assert ring["visible"] and ring["style"] != "none" and ring["width"] >= 2, ring


async def _fits_the_width(page: Page) -> None:
    """Nothing is wider than the window: no sideways scrolling to read a page."""
    await page.wait_for_function(
        "() => document.documentElement.scrollWidth <= document.documentElement.clientWidth"
    )


async def _chart_points(page: Page, metric: str) -> int:
    value = await page.locator(f'figure.chart[data-metric="{metric}"]').get_attribute("data-points")
    return int(value or 0)


async def _wait_points_above(page: Page, metric: str, count: int) -> None:
    await page.wait_for_function(
        "([m, n]) => Number(document.querySelector(`figure.chart[data-metric='${m}']`)"
        "?.dataset.points || 0) > n",
        arg=[metric, count],
    )


async def _tls_state(http, url: str, session_id: str, tls: str) -> str:
    get = {"type": "get", "domain": "tls", "id": tls, "var": "state"}
    async with http.post(f"{url}/v1/sessions/{session_id}/commands", json={"commands": [get]}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["results"][0]["value"]  # type: ignore[no-any-return]


async def test_log_in_start_watch_pause_resume(daemons, db_url, http, scenarios, tmp_path):
    token = await make_token(db_url, "alice", "operator")
    daemon = await daemons.start(db_url)
    http.headers.update(_auth(token))
    await upload(http, daemon, "long", scenarios["long"])
    async with browser_context(tmp_path / "profile") as context:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # A wrong token is refused with a message, and nothing else is shown.
        await page.goto(daemon.url + "/")
        await page.fill("#token", "sst_wrong")
        await page.click("#login-form button[type=submit]")
        await expect(page.locator("#login-error")).to_contain_text("unknown")
        await page.screenshot(path=screenshot_path("01-login"))
        await assert_accessible(page, "the login form, a token refused")
        await _log_in(page, daemon.url, token)
        await expect(page.locator("#app h2")).to_have_text("Sessions")

        # The form is built from the daemon's own schema of a request: a control for every
        # field, the SUMO options' allow-list among them.
        schema = await page.evaluate(
            "fetch('/openapi.json').then(r => r.json())"
            ".then(d => d.components.schemas.SessionRequest.properties)"
        )
        fields = await page.locator("#start-form [data-field]").evaluate_all(
            "els => els.map(e => e.dataset.field)"
        )
        assert set(schema) | set(schema["sumo_options"]["anyOf"][0]["properties"]) == set(fields)
        # A bad field is refused with the daemon's message, naming it.
        await page.select_option("#s-template", "long")
        await page.fill("#s-label", "not a label!")
        await page.click("#start-form button[type=submit]")
        await expect(page.locator("#start-error")).to_contain_text("label")
        # Start a session from the form: the page goes to the session, whose charts fill.
        await page.fill("#s-end", "100000")
        await page.fill("#s-label", "from-the-form")
        await page.click("#start-more > summary")
        await page.select_option("#s-on_interrupt", "fail")
        await page.fill("#s-max_attempts", "2")
        await page.click("[data-field=sumo_options] > summary")
        await page.fill("#s-sumo_options-scale", "1.5")
        await page.select_option("#s-sumo_options-eager-insert", "false")
        await page.click("#start-form button[type=submit]")
        await expect(page).to_have_url(re.compile(r"#/session/"))
        session_id = page.url.rsplit("/", 1)[-1]
        await expect(page.locator("#session-head .badge")).to_have_text("running")
        async with http.get(f"{daemon.url}/v1/sessions/{session_id}") as r:
            sent = (await r.json())["request"]
        assert sent["on_interrupt"] == "fail" and sent["max_attempts"] == 2
        assert sent["sumo_options"] == {"scale": 1.5, "eager-insert": False}
        await _wait_points_above(page, "vehicles", 5)
        first = await _chart_points(page, "vehicles")
        await _wait_points_above(page, "vehicles", first)
        assert await page.locator("figure.chart").count() >= 7  # every sample metric

        # Pause: the chart reaches the sample the session stopped at, and stays there.
        await page.click("#controls button:text-is('Pause')")
        await expect(page.locator("#controls")).to_have_attribute("data-last", "pause")
        async with http.get(f"{daemon.url}/v1/sessions/{session_id}/samples") as r:
            paused_at = (await r.json())["samples"][-1]["sim_time"]
        chart = page.locator('figure.chart[data-metric="vehicles"]')
        await expect(chart).to_have_attribute("data-last", str(int(paused_at)))
        async with http.get(f"{daemon.url}/v1/sessions/{session_id}/samples") as r:
            assert (await r.json())["samples"][-1]["sim_time"] == paused_at
        await page.screenshot(path=screenshot_path("03-session-paused"), full_page=True)
        await assert_accessible(page, "a running session, paused")

        # Resume: it goes on from there.
        await page.click("#controls button:text-is('Resume')")
        await expect(page.locator("#controls")).to_have_attribute("data-last", "resume")
        await page.wait_for_function(
            "t => Number(document.querySelector(\"figure.chart[data-metric='vehicles']\")"
            ".dataset.last) > t",
            arg=paused_at,
        )
        # The sessions page lists it, with its label and status; filters narrow the table.
        await page.click("header nav a[data-page=sessions]")
        row = page.locator(f'#sessions-table tr[data-id="{session_id}"]')
        await expect(row).to_contain_text("from-the-form")
        await expect(row.locator(".badge")).to_have_text("running")
        await page.select_option("#f-status", "completed")
        await expect(row).to_have_count(0)
        await page.select_option("#f-status", "running")
        await expect(row).to_have_count(1)
        await page.screenshot(path=screenshot_path("02-sessions"), full_page=True)
        await assert_accessible(page, "the sessions list, filtered")
        # Stop from the table.
        await row.locator("button:text-is('Stop')").click()
        await wait_status(http, daemon, session_id, {"stopped"})
        await page.select_option("#f-status", "")
        await expect(row.locator(".badge")).to_have_text("stopped")

        # The keyboard alone, from the top of the page (the token is kept in the tab): the
        # first Tab shows "Skip to content"; Tabs go on to the first session's link and to the
        # start form's button, each showing where the focus is.
        await page.reload()
        await expect(row.locator(".badge")).to_have_text("stopped")
        assert await _tab_to(page, "a.skip", limit=1) == 1
        skip = await page.locator("a.skip").bounding_box()
        assert skip is not None and skip["x"] >= 0 and skip["y"] >= 0, skip
        await _assert_focus_visible(page)
        await _tab_to(page, "#sessions-table tbody tr:first-child a")
        await _assert_focus_visible(page)
        await _tab_to(page, "#start-form button[type=submit]")
        await _assert_focus_visible(page)

        # A phone-sized screen shows the same table, one card per session. (A new tab asks
        # for the token again: it is kept per tab.)
        phone = await context.new_page()
        await phone.set_viewport_size(PHONE)
        await _log_in(phone, daemon.url, token)
        await expect(phone.locator(f'tr[data-id="{session_id}"]')).to_be_visible()
        await _fits_the_width(phone)
        await phone.screenshot(path=screenshot_path("02-sessions-phone"), full_page=True)
        await assert_accessible(phone, "the sessions list")
        assert errors == []


async def test_set_a_traffic_light_from_the_map(daemons, db_url, http, scenarios, tmp_path):
    token = await make_token(db_url, "bob", "operator")
    daemon = await daemons.start(db_url)
    http.headers.update(_auth(token))
    await upload(http, daemon, "long", scenarios["long"])
    session = await create_session(http, daemon, template="long", end=100000, label="map")
    await wait_status(http, daemon, session["id"], {"running"})
    async with browser_context(tmp_path / "profile") as context:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await _log_in(page, daemon.url, token)
        await page.goto(f"{daemon.url}/#/session/{session['id']}")
        canvas = page.locator("canvas#map")
        # Frames come while the page watches: vehicles are drawn.
        await page.wait_for_function(
            "() => Number(document.querySelector('canvas#map')?.dataset.vehicles || 0) > 0"
        )
        # Pause, so the light keeps the phase it is given for as long as the test looks.
        await page.click("#controls button:text-is('Pause')")
        await expect(page.locator("#controls")).to_have_attribute("data-last", "pause")
        # Pick a light (the keyboard's way; a click on the canvas picks the same).
        await page.select_option("#light-pick", "B1")
        await expect(canvas).to_have_attribute("data-selected", "light:B1")
        live_state = page.locator('#selection-values dd[data-key="state"]')
        await expect(live_state).to_have_text(re.compile(r"^[rRgGyYsuoO]+$"))
        # What SUMO shows now (the map's last frame may be from just before the pause).
        before = await _tls_state(http, daemon.url, session["id"], "B1")
        await expect(live_state).to_have_text(before)
        await expect(page.locator("#selection-values")).to_have_attribute(
            "data-phase", re.compile(r"\d+")
        )
        # Set another phase (0, or 1 when it is at 0): its state differs from the current one.
        phase = int(await page.locator("#selection-values").get_attribute("data-phase") or 0)
        await page.fill("#phase", "1" if phase == 0 else "0")
        await page.click("#set-phase")
        result = page.locator("#command-result")
        await expect(result).to_contain_text("state now")
        new_state = await result.get_attribute("data-state")
        assert new_state and new_state != before
        # The map's own frames show the light in its new state.
        await expect(live_state).to_have_text(new_state)
        await page.screenshot(path=screenshot_path("04-map"), full_page=True)
        await assert_accessible(page, "a running session with its map, a light picked")
        # A click on the canvas, near the picked light, selects something on the map.
        box = await canvas.bounding_box()
        assert box is not None
        await canvas.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
        await expect(canvas).to_have_attribute(
            "data-selected", re.compile(r"^(vehicle|light|edge):")
        )
        # A click on a vehicle (still: the session is paused) shows its values, those of its
        # frame and those SUMO is asked for once.
        x, y, vehicle = await page.evaluate(
            "() => { const m = document.querySelector('canvas#map').liveMap;"
            " const [x, y] = m.toScreen(m.drawn[0], m.drawn[1]);"
            " return [x / devicePixelRatio, y / devicePixelRatio, m.frame.ids[0]]; }"
        )
        await canvas.click(position={"x": x, "y": y})
        await expect(canvas).to_have_attribute("data-selected", f"vehicle:{vehicle}")
        values = page.locator("#selection-values")
        await expect(values).to_contain_text("road")
        await expect(values).to_contain_text("route")
        await expect(values.locator('dd[data-key="speed"]')).to_have_text(re.compile(r"\d"))
        await page.screenshot(path=screenshot_path("04-map-vehicle"), full_page=True)
        # The command is in the session's history, for a replay.
        async with http.get(f"{daemon.url}/v1/sessions/{session['id']}/commands") as r:
            history = (await r.json())["commands"]
        assert any(c["command"]["type"] == "tls.set_phase" for c in history), history

        # A touch screen's zoom: the buttons under the map.
        await page.click("#map-fit")
        await page.evaluate(
            "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"
        )
        fitted = await canvas.get_attribute("data-view")
        assert fitted
        await page.click("#map-zoom-in")
        await expect(canvas).not_to_have_attribute("data-view", fitted)
        # The keyboard: the map is in the Tab order (just before its buttons), shows its focus,
        # "0" fits it, and the arrow keys pan it (and back).
        await page.keyboard.press("Shift+Tab")
        await expect(canvas).to_be_focused()
        await _assert_focus_visible(page)
        await page.keyboard.press("0")
        await expect(canvas).to_have_attribute("data-view", fitted)
        await page.keyboard.press("ArrowLeft")
        await expect(canvas).not_to_have_attribute("data-view", fitted)
        panned = await canvas.get_attribute("data-view")
        assert panned and panned.split()[0] == fitted.split()[0]  # panned, not zoomed
        await page.keyboard.press("ArrowRight")
        await expect(canvas).to_have_attribute("data-view", fitted)
        await page.keyboard.press("+")
        await expect(canvas).not_to_have_attribute("data-view", fitted)
        await page.keyboard.press("0")
        await expect(canvas).to_have_attribute("data-view", fitted)
        # "Skip to content" moves the focus to the page's main part and stays on this page.
        await page.evaluate("document.activeElement.blur()")
        await page.locator("a.skip").focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("main#main")).to_be_focused()
        await expect(page).to_have_url(re.compile(rf"#/session/{session['id']}$"))

        # A phone-sized screen: the same page, one column, and just as accessible.
        await page.set_viewport_size(PHONE)
        await expect(canvas).to_be_visible()
        await _fits_the_width(page)
        await page.screenshot(path=screenshot_path("04-map-phone"), full_page=True)
        await assert_accessible(page, "a running session with its map")
        assert errors == []


async def test_upload_a_template_folder(daemons, db_url, http, scenarios, tmp_path):
    token = await make_token(db_url, "carol", "operator")
    admin = await make_token(db_url, "frank", "admin")
    daemon = await daemons.start(db_url)
    scenario = scenarios["nested"]
    async with browser_context(tmp_path / "profile") as context:
        page = await context.new_page()
        await _log_in(page, daemon.url, token)
        await page.click("header nav a[data-page=templates]")
        await expect(page.locator("#templates-table")).to_contain_text("No templates yet")
        # A folder as a user picks it: its subfolders kept, its own name not.
        await page.set_input_files("#u-folder", str(scenario.root))
        await expect(page.locator("#u-files")).to_contain_text("net/spider.net.xml.gz")
        await expect(page.locator("#u-config")).to_have_value("cfg/scenario.sumocfg")
        await page.fill("#u-name", "spider")
        await page.click("#upload-form button[type=submit]")
        await expect(page.locator("#upload-form")).to_have_attribute("data-uploaded", "spider:1")
        row = page.locator('#templates-table tr[data-name="spider"]')
        await expect(row).to_contain_text("v1")
        await row.locator("button").click()
        await expect(page.locator("#template-detail")).to_contain_text("add/detectors.add.xml")
        await page.screenshot(path=screenshot_path("05-templates"), full_page=True)
        await assert_accessible(page, "the templates, one shown")
        # The same checks as the API: a name it refuses is refused with its message.
        await page.fill("#u-name", "Bad Name!")
        await page.evaluate("document.getElementById('u-name').removeAttribute('pattern')")
        await page.click("#upload-form button[type=submit]")
        await expect(page.locator("#u-error")).to_contain_text("name")

        # Drag and drop: the files of a scenario dropped on the drop zone, as a browser hands
        # them to the page (a DataTransfer of File objects), then uploaded the same way.
        files = [
            {"name": path, "b64": base64.b64encode(data).decode()}
            for path, data in scenarios["grid3"].files().items()
        ]
        dropped = await page.evaluate_handle(
            """files => {
                const dt = new DataTransfer();
                for (const f of files) {
                    const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
                    dt.items.add(new File([bytes], f.name));
                }
                return dt;
            }""",
            files,
        )
        await page.dispatch_event("#u-drop", "dragover", {"dataTransfer": dropped})
        await expect(page.locator("#u-drop")).to_have_class(re.compile(r"\bover\b"))
        await page.dispatch_event("#u-drop", "drop", {"dataTransfer": dropped})
        await expect(page.locator("#u-files")).to_contain_text("net.net.xml")
        await expect(page.locator("#u-config")).to_have_value("grid3.sumocfg")
        await expect(page.locator("#u-error")).to_have_text("")
        await page.fill("#u-name", "dropped")
        await page.click("#upload-form button[type=submit]")
        await expect(page.locator("#upload-form")).to_have_attribute("data-uploaded", "dropped:1")
        await expect(page.locator('#templates-table tr[data-name="dropped"]')).to_contain_text("v1")
        await page.screenshot(path=screenshot_path("05-templates-dropped"), full_page=True)

        # Deleting takes an admin: an operator is told so, and nothing is deleted.
        async def accept(dialog) -> None:
            await dialog.accept()

        page.on("dialog", accept)
        await page.locator('#templates-table tr[data-name="dropped"] button').click()
        await page.click("#delete-template")
        await expect(page.locator("#toast")).to_contain_text("admin")
        await expect(page.locator('#templates-table tr[data-name="dropped"]')).to_have_count(1)
        # An admin deletes a version, then the whole template.
        http.headers.update(_auth(admin))
        await upload(http, daemon, "spider", scenario)  # v2
        admin_page = await context.new_page()
        admin_page.on("dialog", accept)
        await _log_in(admin_page, daemon.url, admin)
        await admin_page.click("header nav a[data-page=templates]")
        await admin_page.locator('#templates-table tr[data-name="spider"] button').click()
        versions = admin_page.locator("#template-detail details[data-version]")
        await expect(versions).to_have_count(2)
        await admin_page.click("#template-detail details[data-version='1'] > summary")
        await admin_page.click("#template-detail details[data-version='1'] button")
        await expect(versions).to_have_count(1)
        async with http.get(f"{daemon.url}/v1/templates/spider") as r:
            assert [v["version"] for v in (await r.json())["versions"]] == [2]
        await admin_page.click("#delete-template")
        await expect(admin_page.locator('#templates-table tr[data-name="spider"]')).to_have_count(0)
        async with http.get(f"{daemon.url}/v1/templates/spider") as r:
            assert r.status == 404


async def test_compare_two_sessions(daemons, db_url, http, scenarios, tmp_path):
    token = await make_token(db_url, "dave", "operator")
    daemon = await daemons.start(db_url)
    http.headers.update(_auth(token))
    await upload(http, daemon, "grid3", scenarios["grid3"])
    a = await create_session(http, daemon, template="grid3", seed=1, label="seed-1")
    b = await create_session(http, daemon, template="grid3", seed=2, label="seed-2")
    async with http.post(
        f"{daemon.url}/v1/sweeps", json={"template": "grid3", "seeds": [3, 4]}
    ) as r:
        assert r.status == 201, await r.text()
        sweep = await r.json()
    for sid in (a["id"], b["id"], *sweep["sessions"]):
        await wait_status(http, daemon, sid, {"completed"})
    async with browser_context(tmp_path / "profile") as context:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await _log_in(page, daemon.url, token)
        await page.click("header nav a[data-page=compare]")
        await page.check(f'#compare-pick tr[data-id="{a["id"]}"] input')
        await page.check(f'#compare-pick tr[data-id="{b["id"]}"] input')
        await page.click("#compare-go")
        table = page.locator("#compare-table")
        await expect(table).to_contain_text("baseline seed-1")
        await expect(table).to_contain_text("seed-2")
        await expect(table).to_contain_text("arrived")
        await expect(page.locator("#compare-charts figure.chart")).to_have_count(6)
        # Seed 2's differences from seed 1 say which way is better: less waiting, more arrivals.
        async with http.get(f"{daemon.url}/v1/compare?sessions={a['id']},{b['id']}") as r:
            diff = (await r.json())["differences"][0]  # b against a
        for figure, less_is_better in (("mean_waiting_time", True), ("arrived", False)):
            cell = table.locator("tr", has_text=figure.replace("_", " ")).locator("td").nth(1)
            assert diff[figure], diff  # the seeds differ in both (fixed seeds: always so)
            better = (diff[figure] < 0) == less_is_better
            await expect(cell).to_contain_text("better" if better else "worse")
        # The sweep's statistics, per combination.
        await page.select_option("#sweep-id", sweep["id"])
        await page.click("#sweep-go")
        await expect(page.locator("#sweep-result")).to_contain_text("2 runs, 100% done")
        await expect(page.locator("#sweep-result")).to_contain_text("95% interval")
        await page.screenshot(path=screenshot_path("06-compare"), full_page=True)
        await assert_accessible(page, "two sessions and a sweep compared")
        # An ended session's page: its summary and the status history.
        await page.goto(f"{daemon.url}/#/session/{a['id']}")
        await expect(page.locator("#summary-table")).to_contain_text("arrived")
        await expect(page.locator("#session-head .badge")).to_have_text("completed")
        await _wait_points_above(page, "vehicles", 0)  # its charts hold every sample
        await page.screenshot(path=screenshot_path("07-session-ended"), full_page=True)
        await assert_accessible(page, "an ended session with its summary")

        # The list's filters live in the URL (a view to bookmark), and sessions older than the
        # newest N are a click away, each once, newest first.
        await page.goto(f"{daemon.url}/#/sessions?status=completed&limit=3")
        await page.reload()
        await expect(page.locator("#f-status")).to_have_value("completed")
        rows = page.locator("#sessions-table tbody tr")
        await expect(rows).to_have_count(3)
        await page.click("#show-older")
        await expect(rows).to_have_count(4)
        await expect(page.locator("#show-older")).to_be_hidden()
        ids = await rows.evaluate_all("trs => trs.map(tr => tr.dataset.id)")
        assert ids == sorted({a["id"], b["id"], *sweep["sessions"]}, reverse=True)
        await page.fill("#f-label", "seed-2")
        await page.press("#f-label", "Enter")
        await expect(rows).to_have_count(1)
        assert page.url.endswith("#/sessions?status=completed&label=seed-2&limit=3"), page.url
        assert errors == []


async def _lane_allowed(http, url: str, session_id: str, lane: str) -> list[str]:
    get = {"type": "get", "domain": "lane", "id": lane, "var": "allowed"}
    async with http.post(f"{url}/v1/sessions/{session_id}/commands", json={"commands": [get]}) as r:
        assert r.status == 200, await r.text()
        return (await r.json())["results"][0]["value"]  # type: ignore[no-any-return]


async def test_step_close_an_edge_and_download(daemons, db_url, http, scenarios, tmp_path):
    token = await make_token(db_url, "erin", "operator")
    daemon = await daemons.start(db_url)
    http.headers.update(_auth(token))
    await upload(http, daemon, "long", scenarios["long"])
    session = await create_session(
        http, daemon, template="long", mode="stepped", idle_timeout_s=600, label="stepped"
    )
    sid = session["id"]
    await wait_status(http, daemon, sid, {"running"})
    async with browser_context(tmp_path / "profile") as context:
        page = await context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await _log_in(page, daemon.url, token)
        await page.goto(f"{daemon.url}/#/session/{sid}")
        badge = page.locator("#session-head .badge")
        await expect(badge).to_have_text("running", timeout=30_000)

        # Step 30 s, twice: each answer is the sample reached, and the chart shows it.
        await page.fill("#step-seconds", "30")
        await page.click("#step")
        reached = page.locator("#step-result")
        await expect(reached).to_have_attribute("data-sim-time", "30")
        await page.click("#step")
        await expect(reached).to_have_attribute("data-sim-time", "60")
        chart = page.locator('figure.chart[data-metric="vehicles"]')
        await expect(chart).to_have_attribute("data-last", "60")
        await page.screenshot(path=screenshot_path("08-session-stepped"), full_page=True)
        await assert_accessible(page, "a stepped session")

        # Close an edge picked on the map: SUMO lets only emergency vehicles use its lanes, and
        # the map draws it closed; reopen it, and its lanes allow what they did before.
        before = await _lane_allowed(http, daemon.url, sid, "B1C1_0")
        await page.wait_for_function(
            "() => Number(document.querySelector('canvas#map')?.dataset.vehicles || 0) > 0"
        )
        await page.fill("#edge-pick", "B1C1")
        await page.locator("#edge-pick").blur()  # the input's change picks the edge
        canvas = page.locator("canvas#map")
        await expect(canvas).to_have_attribute("data-selected", "edge:B1C1")
        result = page.locator("#command-result")
        await page.click("#map-panel button:text-is('Close edge')")
        await expect(result).to_contain_text("Close edge at 60")
        await expect(canvas).to_have_attribute("data-closed", "B1C1")
        assert await _lane_allowed(http, daemon.url, sid, "B1C1_0") == ["authority"]
        await page.screenshot(path=screenshot_path("09-map-edge-closed"), full_page=True)
        await page.click("#map-panel button:text-is('Reopen edge')")
        await expect(result).to_contain_text("Reopen edge at 60")
        await expect(canvas).to_have_attribute("data-closed", "")
        assert await _lane_allowed(http, daemon.url, sid, "B1C1_0") == before
        async with http.get(f"{daemon.url}/v1/sessions/{sid}/commands") as r:
            kinds = [c["command"]["type"] for c in (await r.json())["commands"]]
        assert kinds == ["edge.close", "edge.reopen"], kinds

        # A CSV download: the file the browser saves holds every sample.
        async with page.expect_download() as info:
            await page.click("#dl-h ~ .actions button:text-is('samples.csv')")
        download = await info.value
        assert download.suggested_filename == f"{sid}-samples.csv"
        saved = Path(await download.path())
        lines = (await asyncio.to_thread(saved.read_text)).strip().splitlines()
        async with http.get(f"{daemon.url}/v1/sessions/{sid}/samples") as r:
            samples = (await r.json())["samples"]
        header = lines[0].split(",")
        assert "sim_time" in header and "vehicles" in header
        assert len(lines) == 1 + len(samples) and len(samples) >= 2
        assert float(lines[-1].split(",")[header.index("sim_time")]) == 60
        assert errors == []

"""The dashboard as a visitor finds it: every page reachable from the overview, and its forms.

:func:`crawl` signs in with a token, follows every same-origin link from ``/`` (breadth
first, in one language) and submits every form it finds with input that must be refused,
then lists what a browser should never get:

- an answer of 500 or more;
- a JSON error where a page was asked for (browsers get error pages with a way back);
- visible text holding ``None``, ``null``, a Python repr, or an identifier that should have
  been words: a ``snake_case`` word (enum values, reason codes, job kinds) or an
  ``UPPER_CASE`` device value. Identifiers an admin must read or type (serials, ticket and
  rollout ids, versions) are shown in ``<code>``, ``<kbd>`` or ``<samp>`` and are not text.

Addresses that differ only in their query (filters, sort, page) are followed a few times per
path, so a page is seen with filters set without crawling every combination.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urljoin, urlsplit

import aiohttp

SESSION_COOKIE = "polyfleet_session"
SIGNIN_COOKIE = "polyfleet_signin"
#: Addresses of one path followed with different queries.
QUERIES_PER_PATH = 4
#: Never followed: signing out ends the crawl's session; files are checked by their own tests.
SKIPPED_PATHS = ("/signout", "/static/", "/api/", "/metrics")
#: Words that mean a value was missing or printed by Python.
FORBIDDEN = re.compile(
    r"\bNone\b(?!\.)|\bnull\b|\bundefined\b|\bNaN\b|<[\w.]+ object at 0x|\b[A-Z]\w+\.[A-Z_]+\b"
    r"|datetime\.|\{'|\['|\bTrue\b|\bFalse\b"
)
#: ``waiting_window``, ``rollout_changed``: an enum value or code shown as it is stored.
SNAKE_CASE = re.compile(r"(?<![\w./-])[a-z]+(?:_[a-z]+)+(?![\w/-])")
#: ``LAN_UP``, ``CONNECTED``: a device's own value shown as the device says it.
DEVICE_WORDS = re.compile(
    r"(?<![\w-])(?:[A-Z]+_[A-Z_]+|CONNECTED|DISCONNECTED|PAIRED|UNPAIRED|READY|ASLEEP)(?![\w-])"
)
#: What an invalid form field holds: a NUL, a bidirectional override and far too much text.
INVALID_VALUE = "\x00\u202e" + "x" * 3000
#: Elements whose text is not read as prose.
NOT_PROSE = frozenset({"script", "style", "code", "kbd", "samp", "pre", "textarea", "template"})


@dataclass
class Form:
    page: str
    action: str
    method: str
    fields: dict[str, str]
    editable: list[str]
    #: What a select, checkbox or radio button has chosen, by its name.
    chosen: dict[str, str] = field(default_factory=dict)


@dataclass
class Page:
    """What the crawl read from one HTML page."""

    links: list[str] = field(default_factory=list)
    forms: list[Form] = field(default_factory=list)
    text: list[str] = field(default_factory=list)


class _Reader(HTMLParser):
    def __init__(self, address: str) -> None:
        super().__init__(convert_charrefs=True)
        self.address = address
        self.page = Page()
        self.hidden = 0
        self.form: Form | None = None
        self.select = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag in NOT_PROSE:
            self.hidden += 1
        if tag == "a" and values.get("href"):
            self.page.links.append(urljoin(self.address, values["href"]))
        elif tag == "form":
            method = values.get("method", "get").lower()
            action = urljoin(self.address, values.get("action") or self.address)
            self.form = Form(self.address, action, method, {}, [])
            self.page.forms.append(self.form)
        elif tag == "option" and self.form is not None and self.select:
            if "selected" in values:
                self.form.chosen[self.select] = values.get("value", "")
        elif tag in ("input", "select", "textarea", "button") and self.form is not None:
            name = values.get("name")
            kind = values.get("type", "text").lower()
            if tag == "select":
                self.select = name or ""
            if name and kind in ("checkbox", "radio") and "checked" in values:
                self.form.chosen[name] = values.get("value", "on")
            if not name or kind in ("submit", "checkbox", "radio", "button", "reset"):
                return
            self.form.fields[name] = values.get("value", "")
            if kind not in ("hidden",) and tag != "button":
                self.form.editable.append(name)

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self.select = ""
        if tag in NOT_PROSE and self.hidden:
            self.hidden -= 1
        elif tag == "form":
            self.form = None

    def handle_data(self, data: str) -> None:
        if not self.hidden and data.strip():
            self.page.text.append(data.strip())


def read_page(address: str, html: str) -> Page:
    reader = _Reader(address)
    reader.feed(html)
    reader.close()
    return reader.page


def text_problems(text: str) -> list[str]:
    """What a browser should not show in ``text`` (visible prose of a page)."""
    found = [
        f"shows {m.group(0)!r} in {text[max(0, m.start() - 60) : m.end() + 40]!r}"
        for m in FORBIDDEN.finditer(text)
    ]
    found += [
        f"shows the identifier {m.group(0)!r} in {text[max(0, m.start() - 60) : m.end() + 40]!r}"
        for m in SNAKE_CASE.finditer(text)
    ]
    found += [
        f"shows the device value {m.group(0)!r} in {text[max(0, m.start() - 60) : m.end() + 40]!r}"
        for m in DEVICE_WORDS.finditer(text)
    ]
    return found


#: Query keys that are no filter: the page of a list, the order, a one-off message.
NOT_FILTERS = frozenset({"page", "sort", "order", "done", "error", "next"})


def kept_filters(address: str, page: Page) -> list[str]:
    """A filter set in the address (by a link from the overview, say) must be visible in the
    page's own filter form, so that the next change there keeps it."""
    parts = urlsplit(address)
    query = {k: v for k, v in parse_qsl(parts.query) if k not in NOT_FILTERS}
    forms = [f for f in page.forms if f.method == "get" and urlsplit(f.action).path == parts.path]
    if not query or not forms:
        return []
    problems = []
    for key, value in query.items():
        if not any(key in form.fields or key in form.chosen for form in forms):
            problems.append(f"the filter {key}={value} is not in the page's filter form")
        elif not any(form.chosen.get(key, form.fields.get(key)) == value for form in forms):
            problems.append(f"the filter {key}={value} is in the form with another value")
    return problems


@dataclass
class CrawlReport:
    """Pages visited and everything wrong with them, as ``address: problem`` lines."""

    visited: list[str] = field(default_factory=list)
    forms: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self) -> None:
        assert not self.problems, (
            f"{len(self.problems)} problems over {len(self.visited)} pages:\n"
            + "\n".join(sorted(set(self.problems)))
        )


async def sign_in(http: aiohttp.ClientSession, url: str, token: str) -> str:
    """The session cookie a token's sign-in gives (sent by hand: it is marked Secure)."""
    async with http.get(url + "/signin") as response:
        page = await response.text()
        nonce = response.cookies[SIGNIN_COOKIE].value
    value = re.search(r'name="nonce" value="([^"]+)"', page)
    assert value is not None, "the sign-in page has no nonce field"
    async with http.post(
        url + "/signin",
        data={"token": token, "nonce": value.group(1), "next": "/"},
        headers={"Cookie": f"{SIGNIN_COOKIE}={nonce}"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303, f"sign-in answered {response.status}"
        return response.cookies[SESSION_COOKIE].value


async def crawl(
    url: str, token: str, *, language: str = "en", limit: int = 600, forms: bool = True
) -> CrawlReport:
    """Every page reachable from ``url``'s overview, signed in with ``token``; then every
    form found submitted with invalid input (and once without its CSRF field)."""
    report = CrawlReport()
    origin = urlsplit(url).netloc
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        cookie = await sign_in(http, url, token)
        headers = {"Cookie": f"{SESSION_COOKIE}={cookie}", "Accept-Language": language}
        queue = deque([url + "/"])
        seen: set[str] = set(queue)
        per_path: Counter[str] = Counter()
        found_forms: dict[tuple[str, str], Form] = {}
        while queue and len(report.visited) < limit:
            address = queue.popleft()
            report.visited.append(address)
            async with http.get(address, headers=headers, allow_redirects=True) as response:
                kind = response.content_type
                body = await response.text(errors="replace")
                status = response.status
            where = address.removeprefix(url)
            if status >= 500:
                report.problems.append(f"{where}: answered {status}")
            if kind == "application/json":
                report.problems.append(f"{where}: a browser got JSON ({status}): {body[:200]}")
            if kind != "text/html":
                continue
            page = read_page(address, body)
            report.problems += [f"{where}: {p}" for p in text_problems("\n".join(page.text))]
            report.problems += [f"{where}: {p}" for p in kept_filters(address, page)]
            for form in page.forms:
                found_forms.setdefault((form.method, urlsplit(form.action).path), form)
            for link in page.links:
                parts = urlsplit(link)
                if parts.netloc != origin or link.split("#")[0] in seen:
                    continue
                if parts.path.startswith(SKIPPED_PATHS) or parts.path.endswith(".csv"):
                    continue
                if parts.query:
                    per_path[parts.path] += 1
                    if per_path[parts.path] > QUERIES_PER_PATH:
                        continue
                target = link.split("#")[0]
                seen.add(target)
                queue.append(target)
        if forms:
            for form in found_forms.values():
                report.forms += 1
                report.problems += await _submit_badly(http, url, headers, form)
    return report


async def _submit_badly(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], form: Form
) -> list[str]:
    """A form sent with every field it lets one type into holding invalid input, and once
    without its CSRF field: each must be answered with a page, never a 5xx or JSON."""
    if urlsplit(form.action).path.startswith(SKIPPED_PATHS):
        return []
    attempts: list[dict[str, str]] = []
    if form.editable:
        attempts.append({**form.fields, **{name: INVALID_VALUE for name in form.editable}})
    if form.method == "post":
        attempts.append({k: v for k, v in form.fields.items() if k != "csrf"})
    problems = []
    source = form.page.removeprefix(url)
    where = f"{form.method.upper()} {form.action.removeprefix(url)} (from {source})"
    for data in attempts:
        if form.method == "post":
            request = http.post(form.action, data=data, headers=headers, allow_redirects=False)
        else:
            request = http.get(form.action, params=data, headers=headers, allow_redirects=False)
        async with request as response:
            body = await response.text(errors="replace")
            if response.status >= 500:
                problems.append(f"{where}: answered {response.status}")
            if response.content_type == "application/json":
                problems.append(f"{where}: a browser got JSON ({response.status}): {body[:200]}")
    return problems

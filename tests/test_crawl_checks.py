"""The dashboard crawl's checks catch what they are there for (tests/testkit/crawl.py)."""

from __future__ import annotations

from testkit.crawl import kept_filters, read_page, text_problems

PAGE = """<html><body><main>
<p>Status: waiting for its window</p><p>Rollout <code>r_20261208_ab12cd</code></p>
<form method="get" action="/devices">
  <select name="health">
    <option value="">all</option><option value="fault" selected>fault</option>
  </select>
  <input type="search" name="q" value="">
</form>
</main></body></html>"""


def test_words_pass_and_identifiers_shown_as_code_pass() -> None:
    """Prose in words passes; an id in <code> is not prose."""
    page = read_page("http://x/devices", PAGE)
    assert text_problems("\n".join(page.text)) == []


def test_identifiers_none_and_reprs_in_prose_are_caught() -> None:
    """An enum value, a unit's own value, None and a dict repr are each named."""
    found = text_problems("waiting_window\nLAN_DOWN\nNone\n{'at': 1}")
    assert len(found) == 4, found
    assert text_problems("None.") == []  # "None." is the English for an empty list


def test_a_filter_dropped_by_the_page_form_is_caught() -> None:
    """A filter in the address must be chosen in the page's own filter form."""
    page = read_page("http://x/devices", PAGE)
    assert kept_filters("http://x/devices?health=fault", page) == []
    assert kept_filters("http://x/devices?health=ok", page) == [
        "the filter health=ok is in the form with another value"
    ]
    assert kept_filters("http://x/devices?site=krk&page=2", page) == [
        "the filter site=krk is not in the page's filter form"
    ]

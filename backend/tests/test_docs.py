"""The API docs work with no internet: `/docs` and `/redoc` load only what Herald itself serves."""

import re
from html.parser import HTMLParser

import pytest

from src.main import app


class _Urls(HTMLParser):
    """Every URL a page names: in `src`/`href`/`spec-url` attributes and as quoted paths in its scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.urls += re.findall(r"""['"]((?:[a-z]+:)?/[^'"]*)['"]""", data)


# Swagger UI: its CSS, favicon and script, the schema and the OAuth2 redirect; ReDoc: favicon, schema, script.
@pytest.mark.parametrize(("page", "count"), [("/docs", 5), ("/redoc", 3)])
def test_the_docs_pages_load_everything_from_herald_itself(client, page, count):
    response = client.get(page)
    assert response.status_code == 200
    assert not re.search(r"(https?:)?//", response.text), "a URL to another host"
    parser = _Urls()
    parser.feed(response.text)
    assert len(set(parser.urls)) == count, parser.urls
    assert app.openapi_url in parser.urls
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.content, url
        assert "no-store" not in asset.headers.get("cache-control", ""), url  # may be cached, unlike /api

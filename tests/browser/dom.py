"""What a browser's parser makes of a page: visible text, tags and attributes."""

from __future__ import annotations

from html.parser import HTMLParser


class Dom(HTMLParser):
    """Visible text, tags and attributes of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs
        self._skip += tag in ("style", "title")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "title")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def parse(page: str) -> Dom:
    dom = Dom()
    dom.feed(page)
    return dom


def visible(page: str) -> str:
    return " ".join(" ".join(parse(page).text).split())

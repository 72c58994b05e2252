"""HTML to readable plain text, in time linear in the size of the HTML.

send_email derives the text/plain part of a message from the user's HTML body,
which may be a million characters long. Python 3.11's ``html.parser`` scans
the whole rest of its input again from every construct that has no end
(``"<a" * 500_000`` runs for minutes; CPython gh-135462), so the tokenizer here
is a small one of our own, built on one rule: every search either consumes
what it scanned or ends the input. A tag, comment or declaration that never
ends swallows the rest of the input, as in the HTML5 tokenizer. Well-formed
HTML produces the same events as ``html.parser`` gives, so it renders as before.

The rendering: paragraphs on their own lines, list items as "- ", table cells
separated by tabs, links followed by their target unless the text already
shows it, images by their alt text; the head, scripts and styles dropped;
``<pre>`` kept verbatim.
"""

from __future__ import annotations

import re
from html import unescape

Attributes = list[tuple[str, str | None]]

# Every pattern is matched at a known position and is a run of one character
# class, at most around one fixed character: a match costs what it consumes,
# and a failed one at most one run that the next pattern then consumes.
_TAG_NAME = re.compile(r"[a-zA-Z][^\t\n\f\r />\x00]*")
_BETWEEN_ATTRIBUTES = re.compile(r"[\t\n\f\r /]*")
_ATTRIBUTE_NAME = re.compile(r"[^\t\n\f\r />][^\t\n\f\r /=>]*")
_EQUALS = re.compile(r"[\t\n\f\r ]*=[\t\n\f\r ]*")
_UNQUOTED_VALUE = re.compile(r"[^\t\n\f\r >]*")
# Raw text (no markup inside) runs to the element's own end tag.
_RAW_TEXT_END = {
    tag: re.compile(rf"</{tag}[\t\n\f\r />]", re.IGNORECASE) for tag in ("script", "style")
}
_WHITESPACE_RUN = re.compile(r"\s+")
# Linear: an attempt fails only on a run of one or two line breaks.
_BLANK_LINES = re.compile(r"\n{3,}")

# How far back the text before a link's end is searched for its target.
LINK_TEXT_WINDOW = 4096

_BLOCK_TAGS = frozenset(
    "address article aside blockquote dd div dl dt fieldset figcaption figure footer form "  # noqa: SIM905
    "h1 h2 h3 h4 h5 h6 header hr main nav ol p pre section table tbody thead tfoot tr ul".split()
)
_SKIPPED_TAGS = frozenset({"head", "script", "style", "template", "title", "noscript"})


class TextBuilder:
    """Turns tokenizer events (named as ``html.parser``'s callbacks) into text."""

    def __init__(self) -> None:
        # (text, verbatim): verbatim pieces are <pre> content, kept as they are.
        self._parts: list[tuple[str, bool]] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._links: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: Attributes) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth += 1
        elif tag == "br":
            self._append("\n")
        elif tag == "li":
            self._append("\n- ")
        elif tag in ("td", "th"):
            self._append("\t")
        elif tag == "img":
            alt = dict(attrs).get("alt")
            if alt:
                self._append(alt)
        elif tag == "a":
            self._links.append(dict(attrs).get("href"))
        if tag in _BLOCK_TAGS:
            self._append("\n\n")
        if tag == "pre":
            self._pre_depth += 1

    def handle_startendtag(self, tag: str, attrs: Attributes) -> None:
        if tag in ("br", "img", "hr"):
            self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "a" and self._links:
            href = self._links.pop()
            if href and href.startswith(("http://", "https://", "mailto:")):
                shown = href.removeprefix("mailto:")
                if shown not in self._recent_text(len(shown) + LINK_TEXT_WINDOW):
                    self._append(f" ({href})")
        if tag in _BLOCK_TAGS:
            self._append("\n\n")
        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._pre_depth:
            self._parts.append((data, True))
        else:
            self._append(_WHITESPACE_RUN.sub(" ", data))

    def _append(self, text: str) -> None:
        self._parts.append((text, False))

    def _recent_text(self, limit: int) -> str:
        """The end of the last three pieces, at most ``limit`` characters: a
        bounded look, so that thousands of links closing after one huge run of
        text do not each search all of it."""
        tail = "".join(text[-limit:] for text, _ in self._parts[-3:])
        return tail[-limit:]

    def text(self) -> str:
        rendered: list[str] = []
        flowing: list[str] = []
        for piece, verbatim in self._parts:
            if verbatim:
                rendered.append(_tidy_line_breaks("".join(flowing)))
                rendered.append(piece)
                flowing = []
            else:
                flowing.append(piece)
        rendered.append(_tidy_line_breaks("".join(flowing)))
        joined = _BLANK_LINES.sub("\n\n", "".join(rendered))
        return joined.strip("\n").rstrip()


def _tidy_line_breaks(text: str) -> str:
    """Drop the spaces that collapsing whitespace left next to line breaks.

    One split and join: the regex ``" *\\n *"`` would try every run of spaces
    to its end before failing where no line break follows, quadratic in a run
    of a million spaces (``" <i>" * 250_000`` froze a worker for 22 s)."""
    if "\n" not in text:
        return text
    first, *middle, last = text.split("\n")
    return "\n".join([first.rstrip(" "), *(line.strip(" ") for line in middle), last.lstrip(" ")])


def _is_ascii_letter(character: str) -> bool:
    return character.isascii() and character.isalpha()


def _start_tag(html: str, opening: int, builder: TextBuilder) -> int:
    """The tag at ``opening`` ("<" + a letter); returns where it ends, or -1
    when the input ends inside it (the tag is then dropped)."""
    name = _TAG_NAME.match(html, opening + 1)
    assert name is not None
    tag = name.group().lower()
    attributes: Attributes = []
    position = name.end()
    while True:
        gap = _BETWEEN_ATTRIBUTES.match(html, position)
        assert gap is not None
        position = gap.end()
        if position >= len(html):
            return -1
        if html[position] == ">":
            self_closing = gap.end() > gap.start() and html[position - 1] == "/"
            break
        attribute = _ATTRIBUTE_NAME.match(html, position)
        assert attribute is not None
        position = attribute.end()
        value: str | None = None
        equals = _EQUALS.match(html, position)
        if equals is not None:
            position = equals.end()
            quote = html[position : position + 1]
            if quote in ('"', "'"):
                closing = html.find(quote, position + 1)
                if closing < 0:
                    return -1
                value = html[position + 1 : closing]
                position = closing + 1
            else:
                bare = _UNQUOTED_VALUE.match(html, position)
                assert bare is not None
                value = bare.group()
                position = bare.end()
            value = unescape(value) if value else value
        attributes.append((attribute.group().lower(), value))
    end = position + 1
    if self_closing:
        builder.handle_startendtag(tag, attributes)
        return end
    builder.handle_starttag(tag, attributes)
    raw_text_end = _RAW_TEXT_END.get(tag)
    if raw_text_end is None:
        return end
    closing_tag = raw_text_end.search(html, end)
    if closing_tag is None:
        return -1
    builder.handle_data(html[end : closing_tag.start()])
    closing_bracket = html.find(">", closing_tag.end() - 1)
    if closing_bracket < 0:
        return -1
    builder.handle_endtag(tag)
    return closing_bracket + 1


def _opens_markup(html: str, opening: int) -> bool:
    """Whether the "<" at ``opening`` starts markup rather than being text."""
    following = html[opening + 1 : opening + 2]
    if following == "/":
        return opening + 2 < len(html)
    return following in ("!", "?") or _is_ascii_letter(following)


def _markup(html: str, opening: int, builder: TextBuilder) -> int:
    """The markup at ``opening``: returns where it ends, or -1 when the input
    ends inside it."""
    if _is_ascii_letter(html[opening + 1]):
        return _start_tag(html, opening, builder)
    if html.startswith("</", opening):
        if _is_ascii_letter(html[opening + 2]):
            name = _TAG_NAME.match(html, opening + 2)
            assert name is not None
            closing = html.find(">", name.end())
            if closing < 0:
                return -1
            builder.handle_endtag(name.group().lower())
            return closing + 1
        if html[opening + 2] == ">":
            return opening + 3
        # Anything else after "</" is a bogus comment, up to the next ">".
    elif html.startswith("<!--", opening):
        # Searched from the "--" of "<!--", so "<!-->" and "<!--->" are
        # (empty) comments, as in HTML5.
        closing = html.find("-->", opening + 2)
        return -1 if closing < 0 else closing + 3
    # Declarations, processing instructions and bogus comments end at ">".
    closing = html.find(">", opening + 2)
    return -1 if closing < 0 else closing + 1


def html_to_text(html: str) -> str:
    """The plain-text rendering of ``html``, in one pass over it."""
    builder = TextBuilder()
    text_start = 0  # where the text not yet handed to the builder begins
    search_from = 0
    while (opening := html.find("<", search_from)) >= 0:
        search_from = opening + 1
        if not _opens_markup(html, opening):
            # A "<" that is text stays in the text run (html.parser hands it
            # over on its own; no character reference spans a "<", so the
            # unescaped text is the same).
            continue
        if opening > text_start:
            builder.handle_data(unescape(html[text_start:opening]))
        end = _markup(html, opening, builder)
        if end < 0:
            return builder.text()
        text_start = search_from = end
    if text_start < len(html):
        builder.handle_data(unescape(html[text_start:]))
    return builder.text()

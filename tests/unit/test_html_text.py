"""html_to_text: linear in its input whatever the input, and the same text as
``html.parser`` gives for well-formed HTML."""

from __future__ import annotations

import time
from html.parser import HTMLParser

import pytest

from taskflow.handlers.html_text import (
    LINK_TEXT_WINDOW,
    Attributes,
    TextBuilder,
    html_to_text,
)

# Each is at most 1,000,000 characters, the payload model's limit for a body.
# Through html.parser and a regex tidy-up, on the test machine: " <i>" 41 s,
# "<i> </i>" 11 s, "<a" over 180 s, "</" 92 s, "<!--" over 100 s, "<?" 97 s,
# "<!" 11 s, the links 5 s; "<![" raised AssertionError. The rest were fast
# already and guard against a quadratic tidy-up coming back.
HOSTILE_BODIES = {
    "spaces between tags": " <i>" * 250_000,
    "spaces": " " * 1_000_000,
    "space and line break": "<p>" + " \n" * 400_000,
    "space elements": "<i> </i>" * 125_000,
    "unclosed start tags": "<a" * 500_000,
    "unclosed end tags": "</" * 500_000,
    "unclosed comments": "<!--" * 250_000,
    "unclosed declarations": "<!" * 500_000,
    "unclosed marked sections": "<![" * 333_333,
    "unclosed processing instructions": "<?" * 500_000,
    "unclosed quoted attributes": '<a x="' * 166_666,
    "one tag of many attributes": "<a " + "x=1 " * 249_000,
    "lone less-than signs": "<" * 1_000_000,
    "ampersands": "&#" * 500_000,
    "unclosed script": "<script>" + "</" * 499_000,
    "links closing after a long text": (
        "<a href=http://x>" * 23_800 + "y" * 500_000 + "</a>" * 23_800
    ),
    "list items": "<li>" * 250_000,
    "line breaks": "<br> " * 200_000,
}


@pytest.mark.parametrize("body", HOSTILE_BODIES.values(), ids=HOSTILE_BODIES.keys())
def test_hostile_bodies_render_within_seconds(body: str) -> None:
    assert len(body) <= 1_000_000
    started = time.monotonic()
    html_to_text(body)
    # Generous: linear rendering takes well under a second on any of them.
    assert time.monotonic() - started < 5


def test_markup_that_never_ends_swallows_the_rest_as_in_html5() -> None:
    assert html_to_text("kept <b") == "kept"
    assert html_to_text("kept <a href='x>y") == "kept"
    assert html_to_text("kept <!-- never closed <p>gone</p>") == "kept"
    assert html_to_text("kept <![CDATA[x") == "kept"
    assert html_to_text("kept <script>var s = '</p>';") == "kept"
    assert html_to_text("a < b, c <3, 4 </ 5") == "a < b, c <3, 4"
    assert html_to_text("x</") == "x</"
    assert html_to_text("<!-->shown<!--->too") == "showntoo"


def test_a_link_is_not_followed_by_its_target_when_the_text_shows_it() -> None:
    assert html_to_text("<a href='https://e.com/a'>https://e.com/a</a>") == "https://e.com/a"
    assert html_to_text("<a href='https://e.com/a'>here</a>") == "here (https://e.com/a)"
    # The look back is bounded; a target shown only further back is repeated.
    far = "<p>https://e.com/a " + "x" * (LINK_TEXT_WINDOW + 50) + "<a href='https://e.com/a'>a</a>"
    assert html_to_text(far).endswith("a (https://e.com/a)")


class _ThroughHtmlParser(HTMLParser):
    """The standard library's tokenizer driving the same builder."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = TextBuilder()

    def handle_starttag(self, tag: str, attrs: Attributes) -> None:
        self.builder.handle_starttag(tag, attrs)

    def handle_startendtag(self, tag: str, attrs: Attributes) -> None:
        self.builder.handle_startendtag(tag, attrs)

    def handle_endtag(self, tag: str) -> None:
        self.builder.handle_endtag(tag)

    def handle_data(self, data: str) -> None:
        self.builder.handle_data(data)


WELL_FORMED = [
    "<p>a</p><p>b</p>",
    "x &amp; y &lt;z&gt; &nbsp;&#8217;&#x2019;&hellip; &unknown; &amp",
    "<pre>  keep\n  lines <b>bold</b>\n\tx</pre><p> after </p>",
    "<a href='mailto:a@b.c'>a@b.c</a> <a href=\"https://x.com/?a=1&amp;b=2\">link</a>",
    "<A HREF=HTTPS://Y.COM>Y</A> <a>no href</a> <a href='ftp://x'>ftp</a>",
    "<img alt='logo'> hi <img src=x alt=\"A &amp; B\"/><br/><br /><hr/>",
    "<p>one <br> two</p>   <p> three </p>\n\n\n<p>para\n  with\n\n  newlines</p>",
    '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>T</title>\n'
    "<style type='text/css'>a > b { x: '</p>' }</style>\n</head>\n<body>\n"
    "<table>\n<tr><td>a</td><td>b</td></tr>\n<tr><th>c</th><td>d &nbsp; e</td></tr>\n"
    "</table>\n<script>if (a < b && c > d) {}</script>\n</body>\n</html>",
    "<!--[if mso]><table><tr><td><![endif]--><div>Hi</div><!--[if mso]></td></tr></table>"
    "<![endif]--><!-- note <p>hidden</p> -->",
    "<div title=\"a > b\" data-x='1' hidden>quoted &gt; inside</div>",
    "a < b and c > d, 5 <3 and 3> 2",
    "<ol><li>x<ul><li>y</li></ul></li></ol><blockquote>q</blockquote><dl><dt>t</dt><dd>d</dd></dl>",
    "<noscript>no</noscript><template><p>t</p></template><?php echo 1 ?>shown",
    "<h1> Title </h1>\n<h2>Sub</h2><span>a</span> <span>b</span><P CLASS=x>Upper</P>",
    '<p>See https://x.com: <a href="https://x.com">here</a></p>\u00a0tab\there',
]


@pytest.mark.parametrize("html", WELL_FORMED)
def test_well_formed_html_renders_as_through_html_parser(html: str) -> None:
    reference = _ThroughHtmlParser()
    reference.feed(html)
    reference.close()
    assert html_to_text(html) == reference.builder.text()

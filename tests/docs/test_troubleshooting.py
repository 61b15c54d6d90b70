"""docs/troubleshooting.md quotes messages that castor really prints.

A quoted message is a line `> \\`…\\`` on that page; in it `<…>` stands for a part that
varies and `…` for text left out. Each must fit one message template of the code: a
string literal or f-string in castor/ or castord/ (its `{…}` parts vary too), or a line
of scripts/. So a message changed in the code, and not on the page, fails here.
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

from tests.docs.runner import REPO

PAGE = REPO / "docs" / "troubleshooting.md"
# Other pages that quote messages the same way (their own "When it goes wrong" parts).
OTHER_PAGES = (REPO / "docs" / "postgresql.md",)
STAR = None  # a part that varies
_QUOTE = re.compile(r"^> `(?P<text>.+)`\s*$")
_DOC_VARIABLE = re.compile(r"<[^<>]+>|…")


def tokens(parts: list[str | None]) -> tuple[str | None, ...]:
    """Characters, with STAR for each varying part (runs of STAR merged)."""
    out: list[str | None] = []
    for part in parts:
        if part is STAR:
            if not out or out[-1] is not STAR:
                out.append(STAR)
        else:
            out.extend(part)
    return tuple(out)


def quote_tokens(text: str) -> tuple[str | None, ...]:
    parts: list[str | None] = []
    for i, literal in enumerate(_DOC_VARIABLE.split(text)):
        if i:
            parts.append(STAR)
        parts.append(literal)
    return tokens(parts)


@cache
def templates() -> list[tuple[str | None, ...]]:
    found = []
    for path in sorted([*REPO.joinpath("castor").rglob("*.py"), *REPO.joinpath("castord").rglob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(tokens([node.value]))
            elif isinstance(node, ast.JoinedStr):
                found.append(tokens([v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else STAR
                                     for v in node.values]))
    for script in sorted(REPO.joinpath("scripts").iterdir()):
        found.extend(tokens([line]) for line in script.read_text().splitlines())
    return found


def overlap(a: tuple[str | None, ...], b: tuple[str | None, ...]) -> int:
    """How many literal characters of `a` and `b` line up in the best reading of both
    as one text (STAR: any text), or -1 if no text fits both."""
    la, lb = len(a), len(b)
    best = [[-1] * (lb + 1) for _ in range(la + 1)]
    best[la][lb] = 0
    for i in range(la, -1, -1):
        for j in range(lb, -1, -1):
            if i == la and j == lb:
                continue
            score = -1
            if i < la and a[i] is STAR:
                score = max(score, best[i + 1][j], best[i][j + 1] if j < lb else -1)
            if j < lb and b[j] is STAR:
                score = max(score, best[i][j + 1], best[i + 1][j] if i < la else -1)
            if i < la and j < lb and a[i] is not STAR and a[i] == b[j] and best[i + 1][j + 1] >= 0:
                score = max(score, best[i + 1][j + 1] + 1)
            best[i][j] = score
    return best[0][0]


def literal_runs(pattern: tuple[str | None, ...]) -> list[str]:
    return "".join("\x00" if t is STAR else t for t in pattern).split("\x00")


def grams(pattern: tuple[str | None, ...], n: int = 8) -> set[str]:
    return {run[k:k + n] for run in literal_runs(pattern) for k in range(len(run) - n + 1)}


@cache
def templates_by_gram() -> dict[str, list[tuple[str | None, ...]]]:
    """Each 8-character run of literal text -> the templates holding it (built once:
    the quotes are many, the templates thousands)."""
    index: dict[str, list[tuple[str | None, ...]]] = {}
    for template in templates():
        for gram in grams(template):
            index.setdefault(gram, []).append(template)
    return index


def fits_the_code(quote: str) -> bool:
    """Some template reads as the quote, its literal text matching most of the quote's."""
    pattern = quote_tokens(quote)
    literal = sum(t is not STAR for t in pattern)
    index = templates_by_gram()
    # Candidates: the templates sharing a run of text with the quote, most shared first.
    shared: dict[tuple[str | None, ...], int] = {}
    for gram in grams(pattern):
        for template in index.get(gram, ()):
            shared[template] = shared.get(template, 0) + 1
    return any(overlap(pattern, template) >= 0.75 * literal
               for template in sorted(shared, key=shared.__getitem__, reverse=True))


def quotes(page: Path = PAGE) -> list[str]:
    return [m["text"] for line in page.read_text().splitlines() if (m := _QUOTE.match(line))]


def test_every_quoted_message_is_in_the_code() -> None:
    found = quotes()
    assert len(found) >= 40, f"only {len(found)} quoted messages: has the page's format changed?"
    short = [q for q in found if not grams(quote_tokens(q))]
    assert not short, f"quotes too vague to check (quote more of the message): {short}"
    missing = [q for q in found if not fits_the_code(q)]
    assert not missing, "quoted on docs/troubleshooting.md but not in the code:\n" + "\n".join(missing)


@pytest.mark.parametrize("page", OTHER_PAGES, ids=lambda p: p.name)
def test_other_pages_quote_real_messages_too(page: Path) -> None:
    found = quotes(page)
    assert found, f"{page.name} quotes no message: has its format changed?"
    missing = [q for q in found if not fits_the_code(q)]
    assert not missing, f"quoted on {page.name} but not in the code:\n" + "\n".join(missing)


def test_the_matcher() -> None:
    template = tokens(["cannot open ", STAR, ": directory ", STAR, " does not exist"])
    assert overlap(quote_tokens("cannot open <file>: directory <dir> does not exist"), template) == 39
    assert overlap(quote_tokens("cannot open /a/b.db: directory /a does not exist"), template) == 39
    assert overlap(quote_tokens("cannot open <file>: …"), template) == 14
    assert overlap(quote_tokens("cannot open <file>: directory <dir> is missing"), template) == -1
    assert overlap(quote_tokens("could not open <file>: directory <dir> does not exist"), template) == -1
    assert not fits_the_code("<a>: <b>")  # too little of it is text to check
    assert fits_the_code("castord: cannot load APP: <message>")
    assert not fits_the_code("castord: cannot load the APP: <message>")

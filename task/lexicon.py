"""Group-identity lexicons and the counterfactual swap (Lu et al. 2018; Zmigrod et al. 2019).

A lexicon maps each group to its identity terms, one per *form* (``singular``, ``plural``,
``adjective``…): a swap from group A to group B replaces every A term of a form by B's
term of the same form, so "I hate women." becomes "I hate Muslims." and "a female
doctor" "a Muslim doctor". Forms the target lacks are left out of that swap.

A swap keeps the label only if the label does not depend on the group. A lexicon says
where that fails: ``label_preserving = false`` refuses counterfactuals altogether, and
``unsafe`` lists per group the words whose meaning differs in that group's usage; a text
holding an unsafe word of the source or the target group is not swapped to that target.

An "a"/"an" right before a term is taken as the term's article and agrees with the
swapped term ("an immigrant" → "a woman"); ``articles = false`` turns that off for terms
that are not nouns (dialect markers: in "a yall service" the "a" is the noun's).

Two file formats, both read by :func:`load_lexicon`:

* JSON: ``{"label_preserving": true, "articles": true, "groups": {"women": {"plural":
  "women", ...}}, "unsafe": {"women": ["ladies"]}, "source": "where the terms come
  from"}`` (all but ``groups`` optional);
* CSV with the header ``group,form,term``: one term per line; lines
  ``#label_preserving,false``, ``#articles,false`` or ``group,unsafe,word`` rows carry the
  rest.

No library does this: Hugging Face ``datasets`` and nlpaug swap words without forms or case.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

UNSAFE_FORM = "unsafe"
FLAGS = ("label_preserving", "articles")  # a lexicon's true/false settings
_SENTENCE_START = re.compile(r"(?:^|[.!?]\s+)[\"'(]?$")


class LexiconError(ValueError):
    """A malformed lexicon file: the message names the file and the line."""


@dataclass(frozen=True)
class Lexicon:
    """Identity terms per group and form, and where a swap would change the label."""

    terms: Mapping[str, Mapping[str, str]]  # group -> form -> term
    label_preserving: bool = True
    unsafe: Mapping[str, frozenset[str]] = field(default_factory=dict)
    #: an "a"/"an" right before a term is its article (terms that are nouns)
    articles: bool = True

    @property
    def groups(self) -> list[str]:
        return sorted(self.terms)

    @cached_property
    def _patterns(self) -> dict[str, re.Pattern[str]]:
        """Per group, one regex over all its terms, longest first ("trans people" before
        "trans"), on word boundaries, any case, any run of whitespace inside a term."""
        patterns = {}
        for group, forms in self.terms.items():
            ordered = sorted(set(forms.values()), key=len, reverse=True)
            body = "|".join(r"\s+".join(map(re.escape, term.split())) for term in ordered)
            # an article right before a term is part of the match, so "an immigrant" can
            # become "a woman" rather than "an woman"
            article = r"(?:(?P<article>an?)\s+)?" if self.articles else ""
            patterns[group] = re.compile(rf"(?<!\w){article}(?P<term>{body})(?!\w)", re.IGNORECASE)
        return patterns

    def _is_unsafe(self, text: str, group: str) -> bool:
        words = self.unsafe.get(group, frozenset())
        return bool(words) and any(w in words for w in re.findall(r"\w+", text.lower()))

    def swap(self, text: str, source: str, target: str) -> str | None:
        """``text`` with ``source``'s terms replaced by ``target``'s; None where the swap is
        not label-preserving, a term's form has no target term, or nothing matched."""
        if source == target or source not in self.terms or target not in self.terms:
            return None
        if not self.label_preserving or self._is_unsafe(text, source):
            return None
        if self._is_unsafe(text, target):
            return None
        forms_of: dict[str, list[str]] = {}
        for form, term in self.terms[source].items():
            forms_of.setdefault(_norm(term), []).append(form)
        missing = False

        def replace(match: re.Match[str]) -> str:
            nonlocal missing
            found = match.group("term")
            article = match.group("article") if self.articles else None
            term = self._target_term(forms_of[_norm(found)], target)
            if term is None:
                missing = True
                return match.group(0)
            at_start = bool(_SENTENCE_START.search(match.string[: match.start("term")]))
            form = forms_of[_norm(found)][0]
            swapped = _with_case_of(found, self.terms[source][form], term, at_start=at_start)
            if article is None:
                return swapped
            between = match.string[match.end("article") : match.start("term")]
            return _article_for(swapped, article) + between + swapped

        swapped, count = self._patterns[source].subn(replace, text)
        return None if missing or count == 0 else swapped

    def _target_term(self, forms: list[str], target: str) -> str | None:
        """The target's term for a source term written as ``forms`` (one term can serve
        two forms, "Muslim" noun and adjective); None where the target lacks the form or
        the forms' target terms differ (which one the text means is not known)."""
        terms = {_norm(self.terms[target][f]) for f in forms if f in self.terms[target]}
        if len(terms) != 1 or any(f not in self.terms[target] for f in forms):
            return None
        return self.terms[target][forms[0]]

    def counterfactuals(
        self, text: str, group: str, k: int, order: list[str]
    ) -> list[tuple[str, str]]:
        """Up to ``k`` (text, target group) swaps of a ``group`` text, targets tried in
        ``order`` (the caller's seeded shuffle, so variants spread over the groups)."""
        variants: list[tuple[str, str]] = []
        for target in order:
            if len(variants) == k:
                break
            swapped = self.swap(text, group, target)
            if swapped is not None and swapped != text:
                variants.append((swapped, target))
        return variants


def _norm(term: str) -> str:
    return " ".join(term.lower().split())


def _with_case_of(found: str, source_term: str, target_term: str, *, at_start: bool) -> str:
    """The target term in the case the text wrote the source term: ALL CAPS, capitalised
    (where the source term is not a capitalised word, or at a sentence start), else as
    the lexicon writes it ("Muslims" stays capitalised mid-sentence)."""
    if found.isupper() and sum(c.isalpha() for c in found) > 1:
        return target_term.upper()
    if found[:1].isupper() and (at_start or not source_term[:1].isupper()):
        return target_term[:1].upper() + target_term[1:]
    return target_term


def _article_for(word: str, article: str) -> str:
    """ "a" or "an" before ``word`` by its first letter, in the case ``article`` was written."""
    chosen = "an" if word[:1].lower() in "aeiou" else "a"
    if article[:1].isupper():
        return chosen.upper() if word.isupper() and len(word) > 1 else chosen.capitalize()
    return chosen


def load_lexicon(path: str | Path) -> Lexicon:
    """Read a JSON or CSV lexicon; a malformed one raises :class:`LexiconError` naming the
    file (key ``augment.lexicon``) and the line."""
    path = Path(path)
    if not path.is_file():
        raise LexiconError(f"augment.lexicon: {path} is not a file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is no content
    except UnicodeDecodeError as error:
        line = text_line_of_byte(path.read_bytes(), error.start)
        raise LexiconError(f"augment.lexicon: {path}, line {line}: not UTF-8 text") from error
    if path.suffix.lower() == ".json":
        return _from_json(path, text)
    if path.suffix.lower() == ".csv":
        return _from_csv(path, text)
    raise LexiconError(f"augment.lexicon: {path} must end in .json or .csv")


def text_line_of_byte(data: bytes, offset: int) -> int:
    return data[:offset].count(b"\n") + 1


def _from_json(path: Path, text: str) -> Lexicon:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise LexiconError(f"augment.lexicon: {path}, line {error.lineno}: {error.msg}") from error

    def fail(key: str, what: str, *within: str) -> LexiconError:
        line = _line_of(text, *within, key)
        return LexiconError(f"augment.lexicon: {path}, line {line}: {what}")

    if not isinstance(raw, dict) or not isinstance(raw.get("groups"), dict):
        raise fail("groups", 'expected an object with "groups": {group: {form: term}}')
    unknown = sorted(set(raw) - {"groups", "label_preserving", "articles", "unsafe", "source"})
    if unknown:
        raise fail(unknown[0], f"unknown key {unknown[0]!r}; valid: groups, label_preserving, "
                   "articles, unsafe, source")  # fmt: skip
    terms: dict[str, dict[str, str]] = {}
    for group, forms in raw["groups"].items():
        if not isinstance(forms, dict) or not forms:
            raise fail(group, f"group {group!r}: expected a non-empty object {{form: term}}",
                       "groups")  # fmt: skip
        for form, term in forms.items():
            if not isinstance(term, str) or not term.strip():
                raise fail(form, f"group {group!r}, form {form!r}: expected a non-empty string",
                           "groups", group)  # fmt: skip
        terms[group] = {form: term.strip() for form, term in forms.items()}
    flags = {key: raw.get(key, True) for key in FLAGS}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise fail(key, f"{key} must be true or false")
    unsafe_raw = raw.get("unsafe", {})
    if not isinstance(unsafe_raw, dict) or not all(
        isinstance(w, list) and all(isinstance(x, str) for x in w) for w in unsafe_raw.values()
    ):
        raise fail("unsafe", "unsafe must be an object {group: [word, ...]}")
    return _checked(path, terms, flags, unsafe_raw, lambda g: _line_of(text, "groups", g))


def _line_of(text: str, *keys: str) -> int:
    """The line of the last of ``keys``, each looked for after the one before (1 if not
    found): where to look in a JSON file for ``groups``, then a group, then its form."""
    number, lines = 1, text.splitlines()
    for key in keys:
        for index in range(number - 1, len(lines)):
            if f'"{key}"' in lines[index]:
                number = index + 1
                break
    return number


def _csv_rows(text: str) -> Iterator[tuple[int, list[str]]]:
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        if row and any(cell.strip() for cell in row):
            yield number, [cell.strip() for cell in row]


def _from_csv(path: Path, text: str) -> Lexicon:
    rows = list(_csv_rows(text))
    if not rows or [c.lower() for c in rows[0][1]] != ["group", "form", "term"]:
        raise LexiconError(f"augment.lexicon: {path}, line 1: expected the header group,form,term")
    terms: dict[str, dict[str, str]] = {}
    unsafe: dict[str, list[str]] = {}
    flags, lines = dict.fromkeys(FLAGS, True), dict[str, int]()
    for number, row in rows[1:]:
        if (flag := row[0].removeprefix("#")) in FLAGS and row[0].startswith("#"):
            if len(row) != 2 or row[1].lower() not in ("true", "false"):
                raise LexiconError(f"augment.lexicon: {path}, line {number}: expected "
                                   f"#{flag},true or #{flag},false")  # fmt: skip
            flags[flag] = row[1].lower() == "true"
            continue
        if len(row) != 3 or not all(row):
            raise LexiconError(f"augment.lexicon: {path}, line {number}: expected 3 non-empty "
                               f"cells group,form,term, got {row}")  # fmt: skip
        group, form, term = row
        if form == UNSAFE_FORM:
            unsafe.setdefault(group, []).append(term)
            continue
        if form in terms.setdefault(group, {}):
            raise LexiconError(f"augment.lexicon: {path}, line {number}: group {group!r} has "
                               f"form {form!r} twice")  # fmt: skip
        terms[group][form] = term
        lines.setdefault(group, number)
    return _checked(path, terms, flags, unsafe, lambda key: lines.get(key, 1))


def _checked(
    path: Path, terms: dict[str, dict[str, str]], flags: Mapping[str, bool],
    unsafe: Mapping[str, Any], line_of: Any,
) -> Lexicon:  # fmt: skip
    if len(terms) < 2:
        raise LexiconError(f"augment.lexicon: {path}, line 1: needs at least two groups to swap "
                           f"between, got {sorted(terms)}")  # fmt: skip
    seen: dict[str, str] = {}
    for group, forms in terms.items():
        for term in forms.values():
            other = seen.setdefault(_norm(term), group)
            if other != group:
                raise LexiconError(
                    f"augment.lexicon: {path}, line {line_of(group)}: term {term!r} belongs to "
                    f"both {other!r} and {group!r}; a swap could not tell them apart"
                )
    for group, words in unsafe.items():
        if group not in terms:  # a misspelt group would turn its label guard off
            raise LexiconError(f"augment.lexicon: {path}: unsafe words of {group!r}, which is "
                               f"not one of the groups {sorted(terms)}")  # fmt: skip
        for word in words:
            if not re.fullmatch(r"\w+", word):  # the text is matched one word at a time
                raise LexiconError(f"augment.lexicon: {path}: unsafe word {word!r} of "
                                   f"{group!r}; valid: one word (letters, digits, _)")  # fmt: skip
    return Lexicon(
        terms=terms,
        label_preserving=flags["label_preserving"],
        unsafe={g: frozenset(w.lower() for w in words) for g, words in unsafe.items()},
        articles=flags["articles"],
    )

"""The counterfactual swap on hand-written sentences, and malformed lexicon files."""

from __future__ import annotations

from pathlib import Path

import pytest

from task.augment import LEXICONS
from task.lexicon import Lexicon, LexiconError, load_lexicon

HATECHECK = load_lexicon(LEXICONS / "hatecheck.json")
SYNTHETIC = load_lexicon(LEXICONS / "synthetic.json")


@pytest.mark.parametrize(
    ("text", "source", "target", "expected"),
    [
        ("I hate women.", "women", "Muslims", "I hate Muslims."),
        ("Women are the worst.", "women", "immigrants", "Immigrants are the worst."),
        ("Muslims are the worst.", "Muslims", "women", "Women are the worst."),
        ("I hate Muslims.", "Muslims", "women", "I hate women."),
        ("WOMEN ARE TRASH", "women", "gay people", "GAY PEOPLE ARE TRASH"),
        ("I love trans people.", "trans people", "gay people", "I love gay people."),
        ("I love trans  people.", "trans people", "disabled people", "I love disabled people."),
        ("A trans person is here.", "trans people", "Muslims", "A Muslim is here."),
        ("That trans guy is nice.", "trans people", "women", "That female guy is nice."),
        ("Trans people and trans rights", "trans people", "women", "Women and female rights"),
        ("No woman, no womanhood.", "women", "immigrants", "No immigrant, no womanhood."),
        ("women's rights", "women", "black people", "black people's rights"),
        ("I h8 w0men", "women", "Muslims", "I h8 Musl1ms"),
        ("so many w o m e n here", "women", "gay people", "so many g a y people here"),
        ("gays and gay people", "gay people", "women", "gays and women"),
    ],
)
def test_a_swap_is_exact_on_hand_written_sentences(
    text: str, source: str, target: str, expected: str
) -> None:
    assert HATECHECK.swap(text, source, target) == expected


def test_a_swap_without_a_source_term_or_to_the_same_group_is_none() -> None:
    assert HATECHECK.swap("I hate everyone.", "women", "Muslims") is None
    assert HATECHECK.swap("I hate women.", "women", "women") is None
    assert HATECHECK.swap("I hate women.", "women", "martians") is None


def test_a_form_the_target_lacks_leaves_the_record_unswapped() -> None:
    lexicon = Lexicon({"a": {"plural": "cats", "adjective": "feline"}, "b": {"plural": "dogs"}})
    assert lexicon.swap("I like cats", "a", "b") == "I like dogs"
    assert lexicon.swap("feline cats", "a", "b") is None


def test_articles_off_leave_an_article_to_the_noun_it_belongs_to(tmp_path: Path) -> None:
    """Dialect markers are not nouns: in "a yall service" the "a" is the service's."""
    markers = {"north": {"m": "indeed"}, "south": {"m": "yall"}}
    assert Lexicon(markers).swap("a yall service", "south", "north") == "an indeed service"
    off = Lexicon(markers, articles=False)
    assert off.swap("a yall service", "south", "north") == "a indeed service"
    assert SYNTHETIC.articles is False  # the shipped synthetic lexicon says so
    csv_path = _write(tmp_path, "markers.csv", "group,form,term\nnorth,m,indeed\nsouth,m,yall\n"
                      "#articles,false\n")  # fmt: skip
    assert load_lexicon(csv_path).articles is False


def test_an_article_follows_the_new_term() -> None:
    lexicon = Lexicon({"a": {"singular": "immigrant"}, "b": {"singular": "woman"}})
    assert lexicon.swap("I met an immigrant.", "a", "b") == "I met a woman."
    assert lexicon.swap("An immigrant came.", "a", "b") == "A woman came."
    assert lexicon.swap("AN IMMIGRANT CAME", "a", "b") == "A WOMAN CAME"
    assert lexicon.swap("a  woman", "b", "a") == "an  immigrant"
    assert lexicon.swap("banana woman", "b", "a") == "banana immigrant"
    assert HATECHECK.swap("Worse than a Muslim.", "Muslims", "immigrants") == (
        "Worse than an immigrant."
    )


def test_a_term_serving_two_forms_is_swapped_only_where_the_target_agrees() -> None:
    # "Muslim" is HateCheck's singular and adjective; women's are "woman" and "female"
    assert HATECHECK.swap("There is nothing worse than a Muslim.", "Muslims", "women") is None
    assert HATECHECK.swap("Muslims are the worst.", "Muslims", "women") == "Women are the worst."


def test_unsafe_words_of_either_group_stop_a_swap() -> None:
    # "bad" is positive in south's dialect: a north sentence with it is not south's
    assert SYNTHETIC.swap("indeed the food was bad rather", "north", "south") is None
    assert SYNTHETIC.swap("yall the food was finest reckon", "south", "north") is None
    assert SYNTHETIC.swap("indeed the food was poor rather", "north", "south") == (
        "yall the food was poor reckon"
    )


def test_a_lexicon_that_is_not_label_preserving_swaps_nothing() -> None:
    lexicon = Lexicon({"a": {"x": "cats"}, "b": {"x": "dogs"}}, label_preserving=False)
    assert lexicon.swap("I like cats", "a", "b") is None


def test_counterfactuals_take_up_to_k_targets_in_the_given_order() -> None:
    order = ["immigrants", "Muslims", "women"]
    variants = HATECHECK.counterfactuals("I hate black people.", "black people", 2, order)
    assert variants == [("I hate immigrants.", "immigrants"), ("I hate Muslims.", "Muslims")]


def test_the_shipped_lexicons_load() -> None:
    assert len(HATECHECK.groups) == 7 and len(SYNTHETIC.groups) == 4
    assert HATECHECK.terms["trans people"]["plural"] == "trans people"


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize(
    ("name", "content", "line", "says"),
    [
        ("bad.json", '{"groups": {\n  "a": {"x": "cats"},\n  "b": {"x": "dogs"\n}', 4, "line 4"),
        ("list.json", "[1, 2]", 1, "expected an object"),
        ("form.json", '{"groups": {\n "a": {"x": "cats"},\n "b": {"x": 3}}}', 3, "'x'"),
        ("one.json", '{"groups": {"a": {"x": "cats"}}}', 1, "at least two groups"),
        ("key.json", '{"groups": {"a": {"x": "c"}, "b": {"x": "d"}},\n"extra": 1}', 2, "extra"),
        ("dup.json", '{"groups": {\n"a": {"x": "cats"},\n"b": {"x": "Cats"}}}', 3, "both"),
        ("head.csv", "name,form,term\na,x,cats\n", 1, "header group,form,term"),
        ("cells.csv", "group,form,term\na,x,cats\nb,dogs\n", 3, "3 non-empty cells"),
        ("twice.csv", "group,form,term\na,x,cats\na,x,kittens\nb,x,dogs\n", 3, "twice"),
        ("flag.csv", "group,form,term\n#label_preserving,maybe\n", 2, "#label_preserving"),
        ("latin1.csv", b"group,form,term\na,x,cats\nb,x,d\xf6gs\n", 3, "not UTF-8"),
        ("lexicon.txt", "a,b,c", 0, "must end in .json or .csv"),
        (
            "flag.json",
            '{"groups": {"a": {"x": "c"}, "b": {"x": "d"}},\n"articles": "no"}',
            2,
            "articles must be true or false",
        ),
        (
            "typo.json",
            '{"groups": {"a": {"x": "c"}, "b": {"x": "d"}}, "unsafe": {"B": ["w"]}}',
            0,
            "unsafe words of 'B', which is not one of the groups ['a', 'b']",
        ),
        (
            "phrase.csv",
            "group,form,term\na,x,cats\nb,x,dogs\nb,unsafe,not bad\n",
            0,
            "unsafe word 'not bad' of 'b'; valid: one word",
        ),
    ],
)
def test_a_malformed_lexicon_gets_one_error_naming_the_file_and_line(
    tmp_path: Path, name: str, content: str | bytes, line: int, says: str
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(LexiconError) as error:
        load_lexicon(path)
    message = str(error.value)
    assert message.startswith(f"augment.lexicon: {path}")
    assert says in message
    if line:
        assert f"line {line}:" in message


def test_a_csv_lexicon_reads_like_the_json_one(tmp_path: Path) -> None:
    path = _write(tmp_path, "lex.csv", "group,form,term\na,plural,cats\nb,plural,dogs\n"
                  "b,unsafe,bark\n#label_preserving,true\n")  # fmt: skip
    lexicon = load_lexicon(path)
    assert lexicon.swap("Cats here", "a", "b") == "Dogs here"
    assert lexicon.swap("cats bark", "a", "b") is None


def test_a_missing_lexicon_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(LexiconError, match=r"augment.lexicon: .*nope.json is not a file"):
        load_lexicon(tmp_path / "nope.json")

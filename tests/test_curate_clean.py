"""The cleaners of `polyalign curate`, each on text where the right answer is known."""

from __future__ import annotations

from align.data.clean import (
    CleanArgs,
    clean_messages,
    find_merged,
    fix_numbering,
    split_merged,
    strip_emoji,
    strip_html,
    strip_urls,
    tidy,
)


def chat(user: str, assistant: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def test_html_tags_and_entities_go_but_text_about_tags_and_comparisons_stay():
    text = (
        "<div class='x'><p>Paris est la capitale&nbsp;de la France &amp; sa plus grande ville.</p>"
        "<script>alert(1)</script><!-- note --><ul><li>un</li><li>deux</li></ul></div>"
    )
    assert tidy(strip_html(text)) == "Paris est la capitale de la France & sa plus grande ville.\n\n- un\n- deux"
    assert strip_html("if a < b and b > c then x<3") == "if a < b and b > c then x<3"
    # An escaped tag is text about a tag: it becomes the literal tag, not stripped.
    assert strip_html("Use the &lt;br&gt; tag.") == "Use the <br> tag."
    # Code is left alone.
    code = "Write:\n```html\n<p>hi</p>\n```\nand `<b>` too, <i>but</i> not this."
    assert strip_html(code) == "Write:\n```html\n<p>hi</p>\n```\nand `<b>` too, but not this."


def test_urls_go_with_their_space_links_keep_their_text_punctuation_stays():
    assert strip_urls("See https://example.com/a?b=1. Then stop.") == "See. Then stop."
    assert strip_urls("Read [the docs](https://docs.python.org/3/) first") == "Read the docs first"
    assert tidy(strip_urls("Mirror (http://x.org/y) and www.example.org, both.")) == "Mirror and, both."
    assert strip_urls("`curl https://x.org` works") == "`curl https://x.org` works"
    assert strip_urls("no links here") == "no links here"


def test_emoji_go_but_symbols_and_other_scripts_stay():
    text = "Hi 👋🏽 from 🇫🇷 with the family 👨‍👩‍👧 ✅ and 1️⃣ ❤️ — © 2024 ™ ★ • 日本語 हिन्दी العربية"
    assert tidy(strip_emoji(text)) == "Hi from with the family and — © 2024 ™ ★ • 日本語 हिन्दी العربية"
    assert strip_emoji("plain ascii :)") == "plain ascii :)"


def test_broken_list_numbering_is_fixed():
    assert fix_numbering("1. a\n2. b\n2. c\n4. d") == "1. a\n2. b\n3. c\n4. d"
    # Blank lines, continuation lines and nested lists do not end a list; the first number is kept.
    text = "3) un\n\n3) deux\n   suite\n   - sous-point\n7) trois"
    assert fix_numbering(text) == "3) un\n\n4) deux\n   suite\n   - sous-point\n5) trois"
    # A paragraph ends a list: two lists, each counted on its own.
    assert fix_numbering("1. a\n1. b\nSome text.\n1. c\n1. d") == "1. a\n2. b\nSome text.\n1. c\n2. d"
    # Correct lists and code are untouched.
    correct = "1. a\n2. b\n3. c"
    assert fix_numbering(correct) == correct
    code = "```\n1. x\n1. y\n```"
    assert fix_numbering(code) == code


def test_merged_dialogues_are_split_into_turns():
    messages = chat(
        "Wie viel ist zwei plus zwei?",
        "Vier.\nUser: Und drei plus drei?\nAssistant: Sechs.\n\n### Human: Danke!\n**Assistant:** Gern.",
    )
    assert find_merged(messages) == [1]
    assert split_merged(messages) == [
        {"role": "user", "content": "Wie viel ist zwei plus zwei?"},
        {"role": "assistant", "content": "Vier."},
        {"role": "user", "content": "Und drei plus drei?"},
        {"role": "assistant", "content": "Sechs."},
        {"role": "user", "content": "Danke!"},
        {"role": "assistant", "content": "Gern."},
    ]
    # A whole transcript pasted into the user turn.
    pasted = chat("Human: hi\nAssistant: hello\nHuman: what is 2+2?", "4")
    assert split_merged(pasted) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "what is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    # Ending on a user turn leaves nothing to train on: not a dialogue.
    assert split_merged(chat("Q?", "A.\nUser: and then?")) is None
    # An answer that only mentions a role, or uses its own, is not merged.
    assert find_merged(chat("Write a chat.", "The user: anyone who logs in.\nAssistant: me")) == []
    assert find_merged(chat("Explain roles.", "In a chat, each user message gets an answer.")) == []
    assert find_merged(chat("Show code.", "```\nUser: x\n```")) == []


def test_clean_messages_switches_and_reports():
    messages = chat("Quelle est la capitale ? 😀", "<b>Paris</b>, voir https://fr.wikipedia.org/wiki/Paris.")
    cleaned, changed, reason = clean_messages(messages, CleanArgs())
    assert reason is None
    assert cleaned == chat("Quelle est la capitale ?", "Paris, voir.")
    assert sorted(changed) == ["emoji", "html", "urls"]
    kept, changed, _ = clean_messages(messages, CleanArgs(html=False, urls=False, emoji=False))
    assert kept == messages and changed == []
    # Roles not listed are left alone.
    only_user, _, _ = clean_messages(messages, CleanArgs(roles=["user"]))
    assert only_user[1] == messages[1] and only_user[0]["content"] == "Quelle est la capitale ?"
    # Nothing left to train on → dropped, with the reason.
    assert clean_messages(chat("Link?", "https://x.org"), CleanArgs())[2] == "empty_after_cleaning"
    merged = chat("2+2?", "4\nUser: 3+3?\nAssistant: 6")
    assert clean_messages(merged, CleanArgs(merged_dialogues="drop"))[2] == "merged_dialogue"
    assert clean_messages(merged, CleanArgs(merged_dialogues="keep"))[0] == merged
    assert len(clean_messages(merged, CleanArgs())[0]) == 4

"""Word tokens, and vocabulary terms compiled for fast matching.

Term syntax (what the YAML files use): lower-case words separated by single spaces; a word
ending in `*` is a stem matching any word that starts with it (`atelecta*`: atelectasis,
atelectatic). Punctuation inside a term is written as in text ("r/o", "lungs/pleura:").

A report is cut into tokens with C-level string operations (`tokens`) and re-joined with single
spaces. `trie_regex` compiles all terms into one regular expression shaped as a prefix trie and led
by a literal space, so the regex engine jumps from word start to word start in C and tests one
character per branch; at a branch longer continuations are tried first, so the longest term wins
("aortic valve" over "aortic", "right upper lobe" over "right"). What a matched text means is
looked up in a `WordTrie` once per distinct text and cached.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_TERM_CHARS = re.compile(r"^[a-z0-9][a-z0-9 '/:.*]*$")
PAD = (",", ";", ":", "(", ")", "/")
# Symbols that separate words; hyphens split words too ("tree-in-bud", "non-calcified", "5-7 mm").
# Every whitespace character (what str.split splits at) becomes a space too.
WHITESPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
BLANK_TABLE = str.maketrans(dict.fromkeys("-\"#$%&*+<=>@[\\]^_`{|}~" + WHITESPACE, " "))
STOPS = re.compile(r"[?!\u2022]")
END = "$"  # trie key of a node's values


def tokens(text: str) -> list[str]:
    """Tokens of lower-case text: words, numbers ("1.5", "12mm"), punctuation and "." sentence ends."""
    # str.replace and str.translate run at C speed (translate has a fast path for ASCII text).
    text = text.translate(BLANK_TABLE)
    if "?" in text or "!" in text or "\u2022" in text:
        text = STOPS.sub(" . ", text)
    text = text.replace("\u00d7", " x ")
    for ch in PAD:
        if ch in text:
            text = text.replace(ch, f" {ch} ")
    text = text.replace(". ", " . ")
    if text.endswith("."):
        text = text[:-1] + " ."
    return text.split()


def validate_term(term: str) -> str:
    """Check one vocabulary term; returns it unchanged. Raises ValueError with what is wrong."""
    if term != term.strip() or "  " in term:
        raise ValueError(f"term {term!r}: remove leading, trailing or double spaces")
    if term != term.lower():
        raise ValueError(f"term {term!r}: write terms in lower case (reports are matched lower-cased)")
    if "-" in term:
        raise ValueError(f"term {term!r}: write hyphens as spaces (reports are read that way)")
    if not _TERM_CHARS.match(term):
        raise ValueError(f"term {term!r}: use letters, digits, spaces, and '*' at the end of a word")
    for word in term.split(" "):
        if "*" in word[:-1]:
            raise ValueError(f"term {term!r}: '*' may only end a word (a stem)")
        if word == "*":
            raise ValueError(f"term {term!r}: a lone '*' matches nothing useful")
    return term


def term_keys(term: str) -> list[str]:
    """A term's trie keys: its words and punctuation tokens; stems keep their '*'."""
    keys: list[str] = []
    for word in validate_term(term).split(" "):
        if word.endswith("*"):
            keys.append(word)
        else:
            keys.extend(tokens(word))
    return keys


def trie_regex(terms: Iterable[str]) -> str:
    """Regex source matching " term" for any of `terms` in space-joined tokens (see module doc).

    The match starts at the space before the term and ends before the space after it.
    """
    root = _trie(terms)
    if not root:
        return "(?!)"
    return " " + _emit(root)


def _trie(terms: Iterable[str]) -> dict:
    """Character trie of the terms' keys (words joined by " "; _STEM for a stem's letters)."""
    root: dict = {}
    for term in terms:
        node = root
        for i, key in enumerate(term_keys(term)):
            if i:
                node = node.setdefault(" ", {})
            if key.endswith("*"):
                for ch in key[:-1]:
                    node = node.setdefault(ch, {})
                node = node.setdefault(_STEM, {})
            else:
                for ch in key:
                    node = node.setdefault(ch, {})
        node[END] = {}
    return root


def trie_body(terms: Iterable[str]) -> str:
    """`trie_regex` without its leading space, to put behind a shared one (" (?:terms|...)"): a
    pattern that starts with a literal lets the regex engine jump to the next space in C."""
    source = trie_regex(terms)
    return source[1:] if source.startswith(" ") else source


def trie_alternatives(terms: Iterable[str]) -> list[str]:
    """The alternatives of `trie_body` (one per first character, in the order they are tried), to
    join with other alternatives in one flat alternation: CPython's engine skips an alternative
    whose first character does not match without entering it, and a flat list costs one such test
    per alternative, where a nested group or a capture group must be entered first."""
    root = _trie(terms)
    if not root:
        return []
    return [re.escape(ch) + _emit(child) for ch, child in sorted(root.items()) if ch not in (_STEM, END)] + (
        ["[a-z]*" + _emit(root[_STEM])] if _STEM in root else []
    )


_STEM = "\x00"


def _emit(node: dict) -> str:
    branches = [re.escape(ch) + _emit(child) for ch, child in sorted(node.items()) if ch not in (_STEM, END)]
    if _STEM in node:
        branches.append("[a-z]*" + _emit(node[_STEM]))
    if END in node:
        branches.append("(?= )")
    if len(branches) == 1:
        return branches[0]
    return "(?:" + "|".join(branches) + ")"


class WordTrie:
    """Terms -> values, matched longest-first over a token list."""

    def __init__(self) -> None:
        self.root: dict = {}
        self._literals: set[str] = set()
        self._stems: list[str] = []  # without the '*'
        self._keys: dict[str, tuple[str, ...]] = {}
        self._starts: dict[str, tuple[str, ...]] = {}

    def add(self, term: str, value: object) -> None:
        node = self.root
        for key in term_keys(term):
            if key.endswith("*"):
                if key[:-1] not in self._stems:
                    self._stems.append(key[:-1])
            else:
                self._literals.add(key)
            node = node.setdefault(key, {})
        values = node.setdefault(END, [])
        if value not in values:
            values.append(value)
        self._keys.clear()
        self._starts.clear()

    def keys_for(self, word: str) -> tuple[str, ...]:
        """Trie keys a text word stands for (cached): the word itself and the stems it starts with."""
        got = self._keys.get(word)
        if got is None:
            found = [word] if word in self._literals else []
            found.extend(s + "*" for s in self._stems if word.startswith(s) and word.isalpha())
            got = self._keys[word] = tuple(found)
        return got

    def starts(self, word: str) -> tuple[str, ...]:
        """Keys of `word` that begin a term (cached; empty for most words of a report)."""
        got = self._starts.get(word)
        if got is None:
            got = self._starts[word] = tuple(k for k in self.keys_for(word) if k in self.root)
        return got

    def match(self, words: list[str], i: int, first: tuple[str, ...]) -> tuple[int, list] | None:
        """Longest term starting at words[i], whose starting keys are `first`: (end index, values)."""
        best: tuple[int, list] | None = None
        stack = [(self.root[k], i + 1) for k in first]
        n = len(words)
        keys_for = self.keys_for
        while stack:
            node, j = stack.pop()
            values = node.get(END)
            if values is not None:
                if best is None or j > best[0]:
                    best = (j, values)
                elif j == best[0]:  # "plaques" is both the literal "plaques" and the stem "plaque*"
                    best = (j, best[1] + [v for v in values if v not in best[1]])
            if j < n and len(node) > (values is not None):
                for k in keys_for(words[j]):
                    child = node.get(k)
                    if child is not None:
                        stack.append((child, j + 1))
        return best

    def terms(self) -> Iterable[str]:
        """All terms (for checks and the medspaCy baseline), as space-joined keys."""

        def walk(node: dict, prefix: list[str]) -> Iterable[str]:
            for key, child in node.items():
                if key == END:
                    yield " ".join(prefix)
                else:
                    yield from walk(child, [*prefix, key])

        return walk(self.root, [])

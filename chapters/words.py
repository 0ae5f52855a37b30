"""The words of the chapters' figures, in English or French (--lang): the mechanism behind `tr`.

A chapter writes `tr = args.tr` once, then every word it draws as `tr("after step {k}", k=3)`
(a template and its values) or `tr.literal(text)` (words the model reads: prompts, captions,
token pieces, code). The French for each template is in french.py; common.save_figure refuses a
figure that shows a line of words that came through neither.
"""

import numbers
import re
import string

import matplotlib.text

from french import FRENCH


class Words:
    """The words a figure shows, in the language --lang asks for.

    tr("step {n}", n=3) is "step 3" in English and, in French, FRENCH["step {n}"] filled in the
    same way ("étape 3"); the English template is the key, so a chapter reads in English.
    tr.literal(text) passes words the model itself reads (prompts, captions, token pieces, layer
    and scheduler names) unchanged in every language: the embedded model learned English captions.
    Every line of text a figure shows must have come through one of the two (save_figure checks),
    so no English is left in a French figure."""

    def __init__(self, lang):
        self.lang = lang
        self.shown = set()  # every line handed out, for save_figure's check

    def __call__(self, english, **values):
        if self.lang == "en":
            return self.literal(english.format(**values))
        if english not in FRENCH:
            raise KeyError(f"chapters/french.py has no French for {english!r}: add it to FRENCH")
        return self.literal(FrenchNumbers().format(FRENCH[english], **values))

    def number(self, value, spec=""):
        """A number alone, written as the language writes it (French: 3,14 and 1 090 231)."""
        formatter = FrenchNumbers() if self.lang == "fr" else string.Formatter()
        return self.literal(formatter.format_field(value, spec))

    def literal(self, text):
        text = str(text)
        self.shown.update(text.splitlines())
        return text

    def untranslated(self, fig):
        """The lines of words in a drawn figure that came through neither tr() nor tr.literal()."""
        lines = {line for text in fig.findobj(matplotlib.text.Text) for line in text.get_text().splitlines()}
        return sorted(line for line in lines if has_words(line) and line not in self.shown)


class FrenchNumbers(string.Formatter):
    """Fills a template in as French writes numbers: a decimal comma, a thin space between thousands
    (3.14 -> 3,14; 1,090,231 -> 1 090 231)."""

    def format_field(self, value, spec):
        text = super().format_field(value, spec)
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            text = text.replace(",", "\u202f").replace(".", ",")
        return text


def has_words(line):
    """Whether a line of figure text holds a word (two letters in a row) outside $math$: numbers,
    tick labels and symbols like "t = 999" or "ε̂" need no translation."""
    return re.search(r"[^\W\d_]{2}", re.sub(r"\$[^$]*\$", "", line)) is not None

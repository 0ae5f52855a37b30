"""The chapters' French edition (--lang fr): every word a figure draws has its French in
chapters/french.py with the same placeholders; the French uses the glossary's terms and none of
the misleading renderings it names (chapters/README.fr.md); the guide's paragraph map, links and
figures point at files that exist; and a chapter computes the same numbers in both languages.
"""

import ast
import json
import os
import re
import string
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
sys.path.insert(0, str(CHAPTERS))
import common  # noqa: E402
from french import FRENCH  # noqa: E402
from words import Words  # noqa: E402

GUIDE = (CHAPTERS / "README.fr.md").read_text()


def templates():
    """{English template: ["file:line", ...]} of every tr(...) call in the chapters."""
    found = {}
    for path in sorted(CHAPTERS.glob("[01]*.py")):
        for node in ast.walk(ast.parse(path.read_text(), path.name)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "tr":
                first = node.args[0]
                where = f"{path.name}:{node.lineno}"
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{where}: tr() takes a string literal (values go in as keyword arguments)"
                )
                found.setdefault(first.value, []).append(where)
    return found


def fields(template):
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def section(title):
    """The lines of README.fr.md's section `## title`, up to the next section."""
    text = GUIDE.split(f"\n## {title}\n", 1)[1]
    return text.split("\n## ", 1)[0].splitlines()


def table_rows(title):
    """The cells of each row of the first table in a section (header and rule left out)."""
    rows = [line for line in section(title) if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_every_figure_word_has_its_french_with_the_same_placeholders():
    used = templates()
    every_chapter = {path.name for path in CHAPTERS.glob("[01]*.py")}
    assert {where.split(":")[0] for places in used.values() for where in places} == every_chapter
    missing = sorted(set(used) - set(FRENCH))
    assert not missing, f"chapters/french.py lacks: {missing}"
    unused = sorted(set(FRENCH) - set(used))
    assert not unused, f"chapters/french.py has words no chapter draws: {unused}"
    for english, french in FRENCH.items():
        assert fields(english) == fields(french), english


def glossary():
    """[(English term, French term, [misleading renderings])] from the guide's glossary."""
    rows = []
    for english, right, wrong, _ in table_rows("Glossaire"):
        rows.append((english, right.split(" (")[0], re.findall(r"«\s*([^«»]+?)\s*»", wrong)))
    return rows


def singular(text):
    """Lower case, each word's plural s dropped: "Connexions de saut" -> "connexion de saut"."""
    return re.sub(r"(\w)s\b", r"\1", text.lower())


def test_french_uses_the_glossary_and_none_of_the_misleading_renderings():
    terms = glossary()
    assert sum(bool(wrong) for _, _, wrong in terms) >= 8
    for english, right, wrong in terms:
        for bad in wrong:
            pattern = re.compile(rf"(?<!\w){re.escape(bad.lower())}(?!\w)")
            offenders = [french for french in FRENCH.values() if pattern.search(french.lower())]
            assert not offenders, f"«{bad}» (the glossary says {right}) in {offenders}"
        if "," in english:
            continue
        concept = re.compile(rf"(?<![\w{{]){re.escape(english.lower())}s?(?!\w)")
        for key, french in FRENCH.items():
            if concept.search(key.lower()):
                assert singular(right) in singular(french), f"{english} -> {right}, not in {french!r}"


def test_the_paragraph_map_covers_the_article_and_points_at_real_files():
    rows = table_rows("Correspondance paragraphe par paragraphe")
    numbers = [int(row[0]) for row in rows]
    assert sorted(set(numbers)) == list(range(1, max(numbers) + 1)) and max(numbers) >= 80
    for number, opening, chapter, figures, _ in rows:
        assert opening.startswith("«") and opening.endswith("»"), number
        for target in re.findall(r"\]\(([^)]+)\)", chapter + figures):
            assert (CHAPTERS / target).is_file(), f"paragraph {number}: {target}"
    assert any("figures/fr/03_" in row[3] for row in rows)  # the central step has its figure


def test_each_figure_exists_in_both_languages_and_each_guide_shows_its_own():
    english = {path.name for path in (CHAPTERS / "figures").glob("*.png")}
    french = {path.name for path in (CHAPTERS / "figures" / "fr").glob("*.png")}
    assert english and english == french
    guide = (CHAPTERS / "README.md").read_text()
    assert set(re.findall(r"\]\(figures/([^/)]+\.png)\)", guide)) == english
    assert set(re.findall(r"\]\(figures/fr/([^)]+\.png)\)", GUIDE)) == french


def test_words_translate_fill_in_french_numbers_and_refuse_the_unknown():
    english, french = Words("en"), Words("fr")
    assert english("guidance {scale}", scale=7.5) == "guidance 7.5"
    assert french("guidance {scale}", scale=7.5) == "guidage 7,5"  # the decimal comma
    assert french.number(1090231.0, ",.0f") == "1\u202f090\u202f231"  # thin spaces between thousands
    with pytest.raises(KeyError, match="chapters/french.py has no French for 'no such words'"):
        french("no such words")


def test_save_figure_refuses_words_that_bypass_tr(tmp_path):
    args = Namespace(out=tmp_path, tr=Words("en"))
    fig, ax = plt.subplots()
    ax.set_title(args.tr("guidance {scale}", scale=3))
    ax.set_xlabel("forgotten words")
    with pytest.raises(ValueError, match=r"not passed through tr\(\).*forgotten words"):
        common.save_figure(fig, args, "refused")
    assert not (tmp_path / "refused.png").exists()
    ax.set_xlabel(args.tr.literal("a red circle"))  # words the model reads stay as they are
    assert common.save_figure(fig, args, "kept").is_file()
    plt.close(fig)


def test_a_chapter_computes_the_same_numbers_in_french(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    facts = {}
    for lang in ("en", "fr"):
        out = tmp_path / lang
        command = [sys.executable, str(CHAPTERS / "02_text_encoder.py"), "--quick", "--lang", lang, "--out", str(out)]
        subprocess.run(command, env=env, check=True, capture_output=True, timeout=300)
        facts[lang] = json.loads((out / "02_text_encoder.json").read_text())
        assert (out / "02_tokens.png").is_file() and (out / "02_similarity.png").is_file()
    assert facts["fr"] == facts["en"]

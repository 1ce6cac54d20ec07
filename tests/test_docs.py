"""The documents quote the results (bench/docs.py): every quoted table equals the file it quotes, every such file
equals what its store generates, and a number the prose gives to three decimals is one of those tables' numbers."""

import re
import shutil
from pathlib import Path

import pytest

from bench.docs import DOCUMENTS, ROOT, blocks, quote, refreshed, tables
from bench.experiments import SUITES
from bench.experiments.suite import tuned_file
from bench.experiments.tables import write_studies
from bench.leaderboard import write_leaderboard
from bench.standings import ranked_frames
from bench.store import Store

# a prose number at the tables' precision: 0.047, -139.758, +0.012
_PRECISE = re.compile(r"(?<![\w.])[+-]?\d+\.\d{3}(?![\d])")


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_quoted_table_equals_the_file_it_quotes(document):
    text = (ROOT / document).read_text()
    assert blocks(text), f"{document} quotes no results"
    assert refreshed(text) == text, f"{document} quotes tables that changed since: run `make docs`"


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_precise_number_of_the_prose_is_in_the_tables_it_quotes(document):
    text = (ROOT / document).read_text()
    quoted = "\n".join((ROOT / source).read_text() for source in {source for source, _ in blocks(text)})
    prose = re.sub(r"<!-- quote .*?<!-- end quote -->", "", text, flags=re.DOTALL)
    missing = [n for n in _PRECISE.findall(prose) if n not in quoted and n.lstrip("+") not in quoted]
    assert not missing, f"{document} gives numbers no quoted file holds: {missing}"


def test_a_quote_names_a_section_or_takes_every_table(tmp_path):
    source = tmp_path / "study.md"
    source.write_text("# Title\n\nintro\n\n## A\n\n| x |\n|---|\n| 1 |\n\n## B\n\n| y |\n|---|\n| 2 |\n")
    assert tables(source.read_text()) == [("A", "| x |\n|---|\n| 1 |"), ("B", "| y |\n|---|\n| 2 |")]
    assert quote(source, "B") == "| y |\n|---|\n| 2 |\n"
    assert quote(source, None) == "**A**\n\n| x |\n|---|\n| 1 |\n\n**B**\n\n| y |\n|---|\n| 2 |\n"
    document = f'text\n<!-- quote {source.name} "A" -->\nstale\n<!-- end quote -->\nmore\n'
    assert (
        refreshed(document, tmp_path)
        == f'text\n<!-- quote {source.name} "A" -->\n| x |\n|---|\n| 1 |\n<!-- end quote -->\nmore\n'
    )
    with pytest.raises(ValueError, match=r"has no table under 'C'; its tables' headings: \['A', 'B'\]"):
        quote(source, "C")


@pytest.mark.slow
@pytest.mark.parametrize(
    "suite", sorted({Path(s).parent.name for d in DOCUMENTS for s, _ in blocks((ROOT / d).read_text())})
)
def test_the_quoted_files_are_what_their_stores_give(suite, tmp_path):
    committed = ROOT / "results" / suite
    shutil.copy(committed / "store.sqlite", tmp_path / "store.sqlite")
    if tuned_file(committed).is_file():  # a tune's record beside the store, which tuning.md reads
        shutil.copy(tuned_file(committed), tuned_file(tmp_path))
    with Store(tmp_path / "store.sqlite", read_only=True) as store:
        written = write_leaderboard(store, tmp_path)
        runs, results = ranked_frames(store)
        written += write_studies(runs, results, tmp_path, SUITES[suite]().studies)
    for path in written:
        if path.suffix == ".md":
            assert path.read_text() == (committed / path.name).read_text(), f"results/{suite}/{path.name} is stale"

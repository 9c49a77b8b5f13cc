"""book/claims.py: a marked number in the prose must be one the outputs print, at the precision written."""

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from book import claims


def write(folder, name: str, prose: str, *printed: str, html: str | None = None):
    outputs = [new_output("stream", name="stdout", text=t) for t in printed]
    if html is not None:
        outputs.append(new_output("execute_result", data={"text/html": html, "text/plain": "<DataFrame>"},
                                  execution_count=2))
    nb = new_notebook(cells=[new_markdown_cell(prose), new_code_cell("run()", outputs=outputs, execution_count=1)])
    path = folder / name
    path.write_text(nbformat.writes(nb))
    return path


def failures(tmp_path, prose: str, *printed: str, html: str | None = None) -> list[str]:
    path = write(tmp_path, "03_demo.ipynb", prose, *printed, html=html)
    return [str(f) for f in claims.check([path])[1]]


def claim(text: str, nb: str | None = None) -> str:
    return f'<span class="claim"{f" data-nb={chr(34)}{nb}{chr(34)}" if nb else ""}>{text}</span>'


@pytest.mark.parametrize("written,printed", [
    ("94.2%", "exact match 94.2%"),
    ("94%", "exact match 94.2"),            # rounded as written
    ("94.2%", "exact match 0.942"),         # a percentage of a printed fraction
    ("94%", "score=0.9423"),
    ("5.7e-06", "max |diff| 5.66e-06"),     # scientific notation, at its precision
    ("95,872", "perplexity 95872.3"),       # thousands commas
    ("1,347-token", "vocabulary 1,347"),
    ("2.4x", "2.43 tokens per character"),  # a factor
    ("76", "rows kept: 76"),
    ("-0.5", "delta -0.50"),
    ("0.44%", "LoRA 0.0044"),
], ids=str)
def test_a_right_claim_passes(tmp_path, written, printed):
    assert failures(tmp_path, f"the run shows {claim(written)} here", printed + "\n") == []


@pytest.mark.parametrize("written,printed", [
    ("94.2%", "exact match 94.0%"),  # written more precisely than it rounds
    ("77", "rows kept: 76"),
    ("0", "difference 5.7e-06"),  # zero is zero, not a small number rounded
    ("1.0", "2.4 tokens per character"),
    ("80%", "exact match 0.77"),
    ("5.7e-06", "5.7e-05"),
    ("0.942", "94.2%"),  # a plain number is not a percentage
    ("0.5", "delta -0.5"),
], ids=str)
def test_a_wrong_claim_fails(tmp_path, written, printed):
    (failure,) = failures(tmp_path, f"the run shows {claim(written)} here", printed + "\n")
    assert failure.startswith(f"03_demo.ipynb: cell 0: claim {written!r}: no printed number matches it; nearest: ")


def test_the_first_number_of_the_span_is_the_claim(tmp_path):
    assert failures(tmp_path, claim("2.1-2.4x shorter"), "factor 2.13\n") == []
    assert len(failures(tmp_path, claim("2.4-2.1x shorter"), "factor 2.13\n")) == 1


def test_numbers_come_from_text_html_and_markdown_outputs_not_from_prose(tmp_path):
    table = "<table><tr><td>full</td><td>94.2</td></tr></table>"
    assert failures(tmp_path, claim("94.2%"), html=table) == []
    assert len(failures(tmp_path, f"{claim('94.2%')} and 94.2 again in the prose")) == 1
    nb = new_notebook(cells=[new_markdown_cell(claim("12")), new_code_cell("", outputs=[new_output(
        "display_data", data={"text/markdown": "**12** rows", "text/plain": "<Markdown>"})])])
    (tmp_path / "04_md.ipynb").write_text(nbformat.writes(nb))
    assert claims.check([tmp_path / "04_md.ipynb"])[1] == []


def test_a_claim_in_another_notebook_checks_that_notebook(tmp_path):
    write(tmp_path, "01_data.ipynb", "no claims here", "kept 76 of 384 rows\n")
    summary = write(tmp_path, "00_quick.ipynb", f"about {claim('76', '01')} of the 384 rows, "
                                               f"and {claim('77', '01')} is wrong", "nothing printed\n")
    counts, wrong = claims.check([summary])
    assert counts == {"00_quick.ipynb": 2}
    (failure,) = [str(f) for f in wrong]
    assert failure.startswith("00_quick.ipynb: cell 0: claim '77': no printed number of 01_data.ipynb matches it")
    only_here = write(tmp_path, "02_x.ipynb", claim("76"), "nothing\n")  # without data-nb: its own outputs
    assert len(claims.check([only_here])[1]) == 1


def test_a_missing_notebook_or_number_fails(tmp_path):
    (missing,) = failures(tmp_path, claim("76", "09"), "76\n")
    assert "data-nb='09': no single executed notebook 09_*.ipynb" in missing
    (empty,) = failures(tmp_path, claim("many"), "76\n")
    assert empty.endswith("claim 'many': no number in the span")


def test_attributes_in_any_order_and_other_spans_ignored(tmp_path):
    prose = '<span data-nb="03" class="claim">7</span> <span class="note">99</span> <span class="x claim">8</span>'
    counts, wrong = claims.check([write(tmp_path, "03_demo.ipynb", prose, "7 and 8\n")])
    assert counts == {"03_demo.ipynb": 2} and wrong == []


def test_command_line_reports_counts_and_exit_status(tmp_path, capsys):
    write(tmp_path, "01_ok.ipynb", claim("3") + " and " + claim("4.5"), "3 4.5\n")
    assert claims.main([str(tmp_path)]) == 0
    write(tmp_path, "02_bad.ipynb", claim("3"), "4\n")
    assert claims.main([str(tmp_path)]) == 1
    out = capsys.readouterr()
    assert "02_bad.ipynb: cell 0: claim '3': no printed number matches it; nearest: 4 (cell 1)" in out.out
    assert "01_ok.ipynb: 2 claim(s)\n02_bad.ipynb: 1 claim(s), 1 failing" in out.err


def test_the_build_counts_and_checks_claims(tmp_path, capsys, monkeypatch):
    from book import build

    nb_dir, executed = tmp_path / "notebooks", tmp_path / "executed"
    nb_dir.mkdir()
    executed.mkdir()
    write(executed, "00_a.ipynb", "score " + claim("94%"), "score 0.90\n")
    (nb_dir / "00_a.ipynb").write_text((executed / "00_a.ipynb").read_text())
    monkeypatch.setattr(build, "ROOT", tmp_path)
    failures = build.check_outputs(executed)
    assert failures == ["claims: 00_a.ipynb: cell 0: claim '94%': no printed number matches it; nearest: "
                        "0.9 (cell 1)"]
    assert "00_a.ipynb: 1 claim(s), 1 failing" in capsys.readouterr().out

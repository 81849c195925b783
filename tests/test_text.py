"""cnnctl.config.text: the one text clipper, and the value shower built on it."""

from __future__ import annotations

from cnnctl.config import clip, short_repr
from tests.conftest import write_config


def test_clip_keeps_what_fits_and_says_how_long_the_rest_was():
    assert clip("x" * 10, 10) == "x" * 10
    assert clip("x" * 11, 10) == "x" * 10 + "... (11 characters)"
    assert clip("x" * 12_345, 3) == "xxx... (12,345 characters)"
    assert clip("", 0) == ""


def test_clip_quoted_and_uncounted():
    assert clip("ab", 5, quoted=True) == "'ab'"
    assert clip("abcdef", 5, quoted=True) == "'abcde'... (6 characters)"
    assert clip("abcdef", 5, counted=False) == "abcde..."


def test_short_repr_cuts_through_clip():
    assert short_repr("y" * 100, 10) == clip("y" * 100, 10, quoted=True)
    assert short_repr(list(range(3))) == "[0, 1, 2]"


def test_a_long_csv_header_is_quoted_and_cut(cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_config(run / "metrics.csv", f"{'y' * 50},loss\n1,2\n")
    result = cli("plot", run, "-o", tmp_path / "curves.png")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {run / 'metrics.csv'}: line 1: no 'epoch' column (the header is "
                                    f"'{'y' * 40}'... (50 characters), 'loss'); "), result.stderr
    assert not (tmp_path / "curves.png").exists()

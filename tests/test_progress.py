"""conformer.progress: a bar on a terminal, plain lines in a pipe, nothing when disabled."""

import io

from conformer.progress import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_piped_output_gets_plain_lines_without_carriage_returns():
    stream = io.StringIO()
    items = list(progress(range(5), desc="evaluate", unit="mol", stream=stream, interval_s=0.0))
    assert items == list(range(5))
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines[0].startswith("evaluate: 1/5 mol (20%)")
    assert lines[-1].startswith("evaluate: 5/5 mol (100%)") and lines[-1].endswith("done")


def test_plain_lines_are_rare_with_the_default_interval():
    stream = io.StringIO()
    with progress(total=1000, desc="prepare", stream=stream) as bar:
        for _ in range(1000):
            bar.update(1)
    assert len(stream.getvalue().splitlines()) == 1  # only the closing line


def test_terminal_gets_a_bar_and_disabled_gets_nothing():
    terminal = _Terminal()
    list(progress(range(3), desc="build-geom", stream=terminal))
    assert "\r" in terminal.getvalue() and "build-geom" in terminal.getvalue()
    quiet = _Terminal()
    list(progress(range(3), desc="x", stream=quiet, enabled=False))
    assert quiet.getvalue() == ""

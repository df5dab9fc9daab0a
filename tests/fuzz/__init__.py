"""Coverage-guided fuzzing of every parser in `sniffer.wire`, with atheris (libFuzzer).

This package owns the fuzz targets (`targets/`, one module per parser, each defining
``TARGET``), their checked-in seed corpora (`corpus/<target>/`) and the runner
(``python -m tests.fuzz``). A target asserts the parser's contract, not only "no
exception": only the documented outcomes, refusals that carry a documented reason,
replayed bytes equal to the input, the same outcome whatever the read boundaries. It must
never import `sniffer` at module level here: the runner instruments `sniffer.wire` before
the targets import it (`one.py`). The default test run replays every seed through its
target (`test_corpus.py`), without atheris.
"""

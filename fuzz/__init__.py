"""Coverage-guided fuzzing (atheris, libFuzzer) of every decoder: ``python -m fuzz.NAME``.

Imports nothing of the connector: a harness imports the decoders inside atheris'
instrumentation, which sees only modules imported after it starts.
"""

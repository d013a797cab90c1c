"""atheris harness: the tcp_table decoder. ``python -m fuzz.tcp_table [libFuzzer flags] DIR...``"""

import atheris

with atheris.instrument_imports(include=["postfix_rest_api_connector"]):
    from fuzz.decoders import one_input_for

from fuzz.harness import run

if __name__ == "__main__":
    run(one_input_for("tcp_table"))

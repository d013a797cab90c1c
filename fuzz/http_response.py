"""atheris harness: the HTTP response parser. ``python -m fuzz.http_response [flags] DIR...``"""

import atheris

with atheris.instrument_imports(include=["postfix_rest_api_connector"]):
    from fuzz.responses import one_input

from fuzz.harness import run

if __name__ == "__main__":
    run(one_input)

"""Schemathesis extensions for the contract run (loaded through SCHEMATHESIS_HOOKS).

Schemathesis cannot serialise NDJSON bodies (the import chunks) by itself; a
generated string is sent as the body text, as for text/plain.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")

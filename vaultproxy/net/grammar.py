"""HTTP/1.1's ``token`` (RFC 9110 section 5.6.2; h11/_abnf.py ``token``), the one
character class a field name, a method, and a connection option are made of, for the
regular expressions of the pool's client (net/h1pool.py) and the lean HTTP/1.1 layer
(seam/lean.py): one pattern, so both read and write the same names."""

from __future__ import annotations

# tchar: "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|"
# / "~" / DIGIT / ALPHA; one or more
TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"

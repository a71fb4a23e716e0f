"""The verdict and what acts on it: ``decide()`` (one pure decision per request), the
request pipeline every entry shares, the running proxy's state, and the check that
the keystore holds what the config references. Above mint/ and inject/, below the
entries (stages/, admin/) that call it."""

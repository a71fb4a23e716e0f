"""Where secret values are recognised in bytes, and what stands in for them: response
redaction, placeholders, honeytokens, minted values, the redacting log filter and
the environment variables that hold a stored secret. Bytes in, bytes out."""

"""The files vaultproxy keeps: the home directory's layout and permission rules, atomic
replacement, and the master password file."""

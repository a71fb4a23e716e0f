"""The web dashboard (SPEC §12): server-rendered pages over the admin API's own functions,
served by the supervisor on ``--dashboard-listen``."""

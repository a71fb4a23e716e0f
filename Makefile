# vaultproxy developer entry points. All targets are idempotent.
#   make demo       set up .venv, create a demo home (./demo-home), start a local echo
#                   upstream and run the proxy on 127.0.0.1:3203 (admin 3201); busy ports:
#                   make demo DEMO_PORT=13203 DEMO_ADMIN_PORT=13201 DEMO_DASHBOARD_PORT=13202
#   make test       set up .venv, then ruff + mypy + the whole test suite (what CI runs)
#   make test-fast  unit tests + the security properties that need no running proxy, in
#                   parallel (pytest-xdist, one worker per core; TEST_FAST_WORKERS=0: serial)
#   make test-engine-latest  tests/security against the newest mitmproxy the pin allows
#                   (a second venv, .venv-engine-latest; constraints-engine-latest.txt)
PYTHON ?= python3.12
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= demo-home
DEMO_PORT ?= 3203
DEMO_ADMIN_PORT ?= 3201
DEMO_DASHBOARD_PORT ?= 3202
# The [tpm] extra (tpm2-pytss) builds against the TSS2 C libraries: installed when they are
# (apt-get install libtss2-dev pkg-config; .ci/run does), else the TPM tests skip locally.
EXTRAS ?= $(shell pkg-config --exists tss2-esys 2>/dev/null && echo ,tpm)
# The quick tier: pure functions and the security properties that need no running proxy.
FAST   := tests/unit tests/security/test_keystore_format.py tests/security/test_keystore_tamper.py \
          tests/security/test_keystore_perms.py \
          tests/security/test_admin_peercred.py
# pytest-xdist workers for test-fast: each is its own session; tests/canary.py sends each
# worker's canary check to the controller, which fails the run on any leak.
TEST_FAST_WORKERS ?= auto

.PHONY: demo test test-fast test-engine-latest lint venv clean

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 12), "vaultproxy needs Python >= 3.12 (pyenv: pyenv install 3.12)"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev$(EXTRAS)]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@DEMO_PORT=$(DEMO_PORT) DEMO_ADMIN_PORT=$(DEMO_ADMIN_PORT) DEMO_DASHBOARD_PORT=$(DEMO_DASHBOARD_PORT) sh scripts/demo.sh $(DEMO)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# PYTHONDONTWRITEBYTECODE (set on some machines) would make every run compile vaultproxy and
# assertion-rewrite every test module again, in each worker: the caches are __pycache__/.
# No FAST test uses schemathesis; its plugin costs each process ~0.5 s of imports.
test-fast: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest -q -n $(TEST_FAST_WORKERS) -p no:schemathesis $(FAST)

# The engine seam against the newest mitmproxy inside the pin: constraints.txt minus its
# mitmproxy pins, plus constraints-engine-latest.txt. Same pip cache as .venv, so only a new
# mitmproxy release is downloaded; `pip install --upgrade` picks it up on every run.
LATEST := .venv-engine-latest
# The security tests whose property rests on the engine (what crosses mitmproxy's HTTP layers,
# TLS, tunnels and the seam's patches); the sandbox, keystore and TPM ones do not touch it.
ENGINE_SECURITY := tests/security/test_request_gate.py tests/security/test_response_gate.py \
          tests/security/test_response_gate_properties.py tests/security/test_host_pinning.py \
          tests/security/test_egress_connect.py tests/security/test_entry_matrix.py \
          tests/security/test_exfil_placeholders.py tests/security/test_exfil_redaction.py \
          tests/security/test_redirect.py tests/security/test_rules_bypass.py \
          tests/security/test_honeytokens.py tests/security/test_credential_lifetime.py \
          tests/security/test_path_prefix.py tests/security/test_proxy_socket.py
LATEST_STAMP := $(LATEST)/.installed

$(LATEST_STAMP): pyproject.toml constraints.txt constraints-engine-latest.txt
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/pip install -q --upgrade pip
	grep -v -E '^mitmproxy(_rs|_linux)?==' constraints.txt | cat - constraints-engine-latest.txt \
	    > $(LATEST)/constraints.txt
	$(LATEST)/bin/pip install -q -c $(LATEST)/constraints.txt -e '.[dev$(EXTRAS)]'
	@touch $(LATEST_STAMP)

test-engine-latest: $(LATEST_STAMP)
	$(LATEST)/bin/pip install -q --upgrade -c $(LATEST)/constraints.txt mitmproxy
	@$(LATEST)/bin/python -c 'from mitmproxy.version import VERSION; print("engine: mitmproxy", VERSION)'
	$(LATEST)/bin/python -m pytest -q $(ENGINE_SECURITY)

clean:
	rm -rf $(VENV) $(LATEST) $(DEMO) $(DEMO).password

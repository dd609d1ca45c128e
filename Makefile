# otel-tokens — the two commands a newcomer needs:
#   make demo   create the environment, start the collector and a keyless demo workload
#   make test   install everything the tests need (Python, Debian prometheus/alertmanager, npm), run them all
# Inner loop: make unit (seconds). make integration / make e2e run the slower layers alone.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
COMPAT  ?= .venv-compat
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_TOOLS = promtool amtool prometheus prometheus-alertmanager docker-compose chromium

.PHONY: demo test unit lint compat-test integration e2e system-deps render check-rendered bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The optional compiled OTLP walk (otel_tokens/_otlp_scan.c, see otel_tokens/accelerator.py): the
# editable install builds it when a C compiler is there; this rebuilds it in place when its source
# changes (pip, for the build backend pyproject.toml names). Without a compiler pip still
# installs, and the collector runs the pure-Python path.
$(VENV)/.compiled: $(VENV)/.installed otel_tokens/_otlp_scan.c setup.py
	$(BIN)/pip install -q --no-deps -e .
	touch $@

demo: $(VENV)/.installed
	$(BIN)/otel-tokens demo --budgets examples/budgets.yaml

# Debian's packages start no service here; tests start their own on ports they choose.
# chromium: the status page's test drives a real headless browser (tests/chromium.py).
system-deps:
	@missing=""; for t in $(DEBIAN_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    prometheus prometheus-alertmanager docker-compose chromium >/dev/null; \
	fi

# The previous major SDK versions (openai 2.x, anthropic 0.x) in a second environment.
$(COMPAT)/.installed: pyproject.toml
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q --upgrade pip
	$(COMPAT)/bin/pip install -q -e . 'openai>=2,<3' 'anthropic<1' pytest pytest-timeout
	touch $@

lint: $(VENV)/.installed
	$(BIN)/ruff check otel_tokens tests benchmarks
	$(BIN)/ruff format --check otel_tokens tests benchmarks
	$(BIN)/mypy

unit: $(VENV)/.compiled
	$(BIN)/pytest -q -m "not integration" -x

# Real servers and tools (every e2e test is also integration).
integration: $(VENV)/.installed system-deps
	$(BIN)/pytest -q -m integration

# End to end as a user runs it: real SDKs -> fake provider -> OTLP -> collector -> Prometheus/Alertmanager.
e2e: $(VENV)/.installed system-deps
	$(BIN)/pytest -q -m e2e

compat-test: $(COMPAT)/.installed
	$(COMPAT)/bin/python -m pytest -q -p no:cacheprovider \
	  tests/test_openai_instrumentation.py tests/test_anthropic_instrumentation.py

# OTEL_TOKENS_EXPECT_COMPILED: here the compiled walk must be built, and is tested against Python.
test: $(VENV)/.compiled $(COMPAT)/.bench-installed system-deps lint
	OTEL_TOKENS_EXPECT_COMPILED=1 $(BIN)/pytest -q
	$(MAKE) --no-print-directory compat-test

render: $(VENV)/.installed
	$(BIN)/otel-tokens render examples/budgets.yaml

check-rendered: $(VENV)/.installed
	$(BIN)/otel-tokens check examples/budgets.yaml

# The official OpenTelemetry OpenAI instrumentation, our peer, supports openai 2.x (see benchmarks/README.md).
$(COMPAT)/.bench-installed: $(COMPAT)/.installed
	$(COMPAT)/bin/pip install -q 'opentelemetry-instrumentation-openai-v2==2.4b0' 'opentelemetry-util-genai==1.1b0'
	touch $@

bench: $(VENV)/.compiled $(COMPAT)/.bench-installed
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(COMPAT) .pytest_cache .mypy_cache .ruff_cache

# otel-tokens — the two commands a newcomer needs:
#   make demo   create the environment, start the collector and a keyless demo workload
#   make test   install everything the tests need (Python, Debian prometheus/alertmanager, npm), run them all
# Inner loop: make unit (seconds). make integration / make e2e run the slower layers alone.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
COMPAT  ?= .venv-compat
INTEROP ?= .venv-interop
INTEROP_LEGACY ?= .venv-interop-legacy
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_TOOLS = promtool amtool prometheus prometheus-alertmanager docker-compose chromium valgrind

.PHONY: demo test unit lint compat-test interop-test integration e2e system-deps render check-rendered bench clean

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
	    prometheus prometheus-alertmanager docker-compose chromium valgrind >/dev/null; \
	fi

# The previous major SDK versions (openai 2.x, anthropic 0.x) in a second environment.
$(COMPAT)/.installed: pyproject.toml
	$(PYTHON) -m venv $(COMPAT)
	$(COMPAT)/bin/pip install -q --upgrade pip
	$(COMPAT)/bin/pip install -q -e . 'openai>=2,<3' 'anthropic<1' pytest pytest-timeout
	touch $@

# Other instrumentations users already run, each with the real package (tests/interop). They pin
# SDKs and helper libraries that clash (OpenLIT and openai-v2 need openai 2.x / anthropic 0.x and
# util-genai 1.1; the genai-* line needs util-genai 1.3), so two environments of their own, each
# case in its own process (instrumentors patch the SDKs globally). Cases: tests/interop/harness.py.
INTEROP_CASES = genai-openai genai-anthropic openllmetry-openai openllmetry-anthropic \
  openinference-openai openinference-anthropic
INTEROP_LEGACY_CASES = openai-v2 openlit-openai openlit-anthropic

$(INTEROP)/.installed: pyproject.toml
	$(PYTHON) -m venv $(INTEROP)
	$(INTEROP)/bin/pip install -q --upgrade pip
	$(INTEROP)/bin/pip install -q -e . 'openai>=3' 'anthropic>=2' pytest pytest-timeout \
	  'opentelemetry-instrumentation-genai-openai==1.3b0' 'opentelemetry-instrumentation-genai-anthropic==1.3b0' \
	  'opentelemetry-instrumentation-openai==0.62.4' 'opentelemetry-instrumentation-anthropic==0.62.4' \
	  'openinference-instrumentation-openai==0.1.66' 'openinference-instrumentation-anthropic==3.1.0'
	touch $@

$(INTEROP_LEGACY)/.installed: pyproject.toml
	$(PYTHON) -m venv $(INTEROP_LEGACY)
	$(INTEROP_LEGACY)/bin/pip install -q --upgrade pip
	$(INTEROP_LEGACY)/bin/pip install -q -e . 'openai>=2,<3' 'anthropic<1' pytest pytest-timeout \
	  'openlit==1.45.0' 'opentelemetry-instrumentation-openai-v2==2.4b0' 'opentelemetry-util-genai==1.1b0'
	touch $@

interop-test: $(INTEROP)/.installed $(INTEROP_LEGACY)/.installed
	@set -e; \
	for c in $(INTEROP_CASES); do echo "interop: $$c"; \
	  OTEL_TOKENS_INTEROP_CASES=$$c $(INTEROP)/bin/python -m pytest -q -p no:cacheprovider tests/interop; done; \
	for c in $(INTEROP_LEGACY_CASES); do echo "interop: $$c"; \
	  OTEL_TOKENS_INTEROP_CASES=$$c $(INTEROP_LEGACY)/bin/python -m pytest -q -p no:cacheprovider tests/interop; done

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
	$(MAKE) --no-print-directory interop-test

render: $(VENV)/.installed
	$(BIN)/otel-tokens render examples/budgets.yaml

check-rendered: $(VENV)/.installed
	$(BIN)/otel-tokens check examples/budgets.yaml

# The official OpenTelemetry OpenAI instrumentation, our peer, supports openai 2.x (see benchmarks/README.md).
$(COMPAT)/.bench-installed: $(COMPAT)/.installed
	$(COMPAT)/bin/pip install -q 'opentelemetry-instrumentation-openai-v2==2.4b0' 'opentelemetry-util-genai==1.1b0'
	touch $@

bench: $(VENV)/.compiled $(COMPAT)/.bench-installed system-deps
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(COMPAT) $(INTEROP) $(INTEROP_LEGACY) .pytest_cache .mypy_cache .ruff_cache

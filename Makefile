# The single entry point. `make run` and `make test` each do all the set-up they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OPENGROK_HOME ?= $(CURDIR)/.opengrok
export DAGSTER_HOME ?= $(OPENGROK_HOME)/dagster_home
PYTEST_ARGS ?=
# The suite's two passes (target `test`): a marker expression narrowing both, and the workers of the first.
MARKS ?=
TEST_WORKERS ?= 2

.PHONY: setup system-packages docker-packages docker-images docker-test run lint test test-fast dev bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=25"
	# torch first and pinned: the CPU wheel; a loose requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/opengrok provision

run: setup
	$(BIN)/opengrok run

# What the tests need from Debian: a PostgreSQL server (the production instance config is tested against
# it) and headless Chromium + ChromeDriver (the UI test). Installs only what is missing, quietly.
SYSTEM_PACKAGES := postgresql chromium chromium-driver
system-packages:
	@missing=$$(for package in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$package 2>/dev/null | grep -q "install ok installed" || echo $$package; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages for the tests:" $$missing; \
		sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# The docker/ deployment built and started for real, without a registry: Debian's Docker engine (one of its own,
# docker/dockerd-private.sh, so nothing else on the machine is touched), debootstrap for the base image, and
# compose 1.29 (Debian's) to start docker/docker-compose.yml. The images stay in DOCKER_STATE between runs.
DOCKER_STATE ?= /var/tmp/opengrok-docker
export OPENGROK_DOCKER_STATE := $(DOCKER_STATE)
docker-packages:
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="docker.io debootstrap docker-compose"

# Base, PostgreSQL and OpenGrok images (docker/build-offline.sh); the engine is stopped again afterwards.
docker-images: docker-packages $(STAMP)
	@docker/dockerd-private.sh start $(DOCKER_STATE) >/dev/null
	@DOCKER_HOST=unix://$(DOCKER_STATE)/docker.sock PIP="$(CURDIR)/$(BIN)/pip" docker/build-offline.sh; \
		status=$$?; docker/dockerd-private.sh stop $(DOCKER_STATE); exit $$status

# The deployment tests (the default launcher, then one container per run): they start and stop the engine and every
# container themselves.
docker-test: docker-images
	$(BIN)/python -m pytest -m deployment tests/test_docker_deployment.py tests/test_docker_run_launcher.py $(PYTEST_ARGS)

# Lint first: a style or import error fails in seconds instead of after the suite.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Two passes: every test but the `timing` ones on $(TEST_WORKERS) workers (pytest-xdist, a test file per worker at a
# time, so module fixtures such as a `dagster dev` start once), then the `timing` tests alone, since a second worker
# would distort the clock they assert on. Then, on a whole run (no MARKS, no PYTEST_ARGS) where this machine can start
# a Docker engine of its own (as root), the docker/ deployment tests (`docker-test`, marker `deployment`);
# DEPLOYMENT_TESTS=0 leaves them out. Every pass runs even when an earlier one fails; "no test selected" (5) is fine.
SELECTED = not deployment$(if $(MARKS), and ($(MARKS)))
DEPLOYMENT_TESTS ?= $(if $(filter 0,$(shell id -u)),1,0)
DEPLOYMENT_PASS = $(if $(MARKS)$(PYTEST_ARGS),0,$(DEPLOYMENT_TESTS))
test: lint system-packages
	@status=0; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "$(SELECTED) and not timing" $(PYTEST_ARGS) \
		|| status=$$?; \
	[ $$status -ne 5 ] || status=0; \
	$(BIN)/python -m pytest -m "$(SELECTED) and timing" $(PYTEST_ARGS) \
		|| { code=$$?; [ $$code -eq 5 ] || status=$$code; }; \
	if [ "$(DEPLOYMENT_PASS)" = 1 ]; then \
		$(MAKE) --no-print-directory docker-test || { [ $$status -ne 0 ] || status=1; }; \
	else \
		echo "make test: the docker/ deployment tests were left out (they run on a whole run as root; make docker-test)"; \
	fi; \
	exit $$status

test-fast: MARKS = not integration
test-fast: test

dev: setup
	$(BIN)/opengrok topics sync
	$(BIN)/dagster dev -w workspace.yaml

# Every benchmark (and the studies of experiments/), written to docs/benchmarks.md; TRL is a bench-only dependency (the training comparison).
bench: setup
	$(BIN)/pip install --quiet -e ".[test,bench]"
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .opengrok

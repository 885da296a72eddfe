# Quick start on a fresh Debian 12 machine: `make demo` or `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# What PIM needs at run time, plus what the test fixtures and examples use.
DEB_PACKAGES := qemu-system-x86 qemu-system-arm qemu-efi-aarch64 qemu-utils ovmf xorriso isolinux syslinux syslinux-common \
                mtools dosfstools busybox-static mmdebstrap e2fsprogs fdisk cpio zstd \
                openssh-client openssh-server python3-venv
FIXTURE_CACHE ?= $(HOME)/.cache/pim-test-fixtures

.PHONY: setup debs test demo acceptance bench clean

setup: debs $(VENV)/.installed

debs:
	@scripts/ensure-debs $(DEB_PACKAGES) $$($(PYTHON) -c "import runpy; \
	  print(' '.join(runpy.run_path('tests/fixtures/installer/build.py')['REQUIRED_DEBIAN_PACKAGES']))")

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

test: setup
	$(VENV)/bin/pytest -m "not acceptance"

acceptance: setup
	$(VENV)/bin/pytest -m acceptance

# The real Debian installer when the host's mirror serves it, else the fixture ISO
# (scripts/demo-installer says which and why in one line).
demo: setup
	@cfg=$$($(PY) scripts/demo-installer --cache-dir $(FIXTURE_CACHE)) && \
	  $(VENV)/bin/pim build demo --config "$$cfg"

bench: setup
	cd bench && ../$(PY) cache_bench.py && ../$(PY) remote_cache_bench.py && ../$(PY) builders_bench.py && ../$(PY) deploy_bench.py && ../$(PY) pulumi_bench.py && ../$(PY) tofu_bench.py && ../$(PY) packer_bench.py && ../$(PY) aarch64_bench.py

clean:
	rm -rf $(VENV) .pytest_cache

# A real browser for the report's page (tests/report.rs, the_page_loads_in_headless_chromium):
# Debian's chromium, run headless by the test against a file:// page (no server to start or stop).
if ! command -v chromium >/dev/null 2>&1; then
    apt_install chromium fonts-dejavu-core
fi
BEATLAB_TEST_CHROMIUM="$(command -v chromium)"
export BEATLAB_TEST_CHROMIUM

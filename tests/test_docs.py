"""The documentation site builds, and what it shows of the examples is real.

`mkdocs build --strict` fails on a broken link or anchor, a missing
included file and a reference that cannot be generated from the
docstrings. Code fragments of the docs that name an example file must be
copied from it verbatim, and the README's quick start is examples/quickstart.py.
"""

import importlib.util
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

DOCS = os.path.join(ROOT, 'docs')
# "From `examples/x.py`:" (or any text ending with the file name and a
# colon), a blank line, then a python block copied from that file
FRAGMENT = re.compile(
    r'`(examples/[\w/]+\.py)`:\n\n```python\n(.*?)```', re.DOTALL)


def read(path):
    with open(os.path.join(ROOT, path), encoding='utf-8') as file:
        return file.read()


def doc_pages():
    for folder, _, names in os.walk(DOCS):
        for name in names:
            if name.endswith('.md'):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def missing_tools():
    """The documentation tools (the `docs` extra) that are not installed."""
    return [name for name in ('mkdocs', 'material', 'mkdocstrings',
                              'mkdocstrings_handlers')
            if importlib.util.find_spec(name) is None]


@pytest.mark.timeout(120)
def test_mkdocs_build_strict(tmp_path):
    missing = missing_tools()
    if missing:
        pytest.skip(f'documentation tools not installed ({", ".join(missing)}): '
                    "pip install -e '.[docs]'")
    site = tmp_path / 'site'
    result = subprocess.run(
        [sys.executable, '-m', 'mkdocs', 'build', '--strict',
         '--config-file', os.path.join(ROOT, 'mkdocs.yml'),
         '--site-dir', str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=110, check=False,
        env=dict(os.environ, NO_MKDOCS_2_WARNING='1'))
    assert result.returncode == 0, result.stdout + result.stderr
    # the reference is generated from the docstrings
    workers = (site / 'reference' / 'workers' / 'index.html').read_text()
    assert 'num_workers' in workers and 'handle_request' in workers
    # the tutorial includes the example file itself
    first_app = (site / 'tutorial' / 'first-app' / 'index.html').read_text()
    assert 'next_id' in first_app and '--8&lt;--' not in first_app


def test_fragments_are_copied_from_the_examples():
    found = 0
    for page in doc_pages():
        for example, fragment in FRAGMENT.findall(read(page)):
            if fragment.startswith('--8<--'):
                # a whole file included by the build: the one named
                assert fragment.strip() == f'--8<-- "{example}"', page
                continue
            assert fragment in read(example), (
                f'{page}: this fragment is not in {example}:\n{fragment}')
            found += 1
    assert found >= 2   # the pattern still finds the fragments


def test_readme_quick_start_is_the_example():
    readme = read('README.md')
    section = readme[readme.index('\n## Quick start\n'):]
    code = re.search(r'```python\n(.*?)```', section, re.DOTALL).group(1)
    assert read('examples/quickstart.py').endswith(code)
    assert 'second\nterminal' in section or 'second terminal' in section

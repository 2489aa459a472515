"""The documentation resolves inside the repository: every relative link of README.md and docs/*.md points to a file
that exists, every path of this repository that they name (in code spans and code blocks) exists, and no file of
the repository refers to a document outside it (a user's clone has only the repository)."""
import glob
import os
import re

import pytest

from helpers import REPO

DOCS = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))
# top-level entries a named path may start with: the repository's own folders and files
TOP = {p.name for p in REPO.iterdir() if not p.name.startswith('.') or p.name == '.ci'} - {'output', 'data'}
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
CODE = re.compile(r'```.*?```|`[^`\n]+`', re.S)
PATH = re.compile(r'^[\w.-]+(?:/[\w.*-]+)+/?$')
SKIPPED_DIRS = {'.git', '.venv', 'output', 'data', '__pycache__', '.pytest_cache'}
BINARY = ('.pt', '.png', '.pth', '.tar', '.npz', '.pyc')
# A document outside the repository: the internal notes it was built from, and the paths of a development machine.
OUTSIDE = re.compile(r'\b' + 'SP' + r'EC\b|\.\./shared\b|/work/(?:main|wt|shared)\b')


def _links(text: str) -> list:
    return [t for t in LINK.findall(text) if not re.match(r'^(?:[a-z]+:|#)', t)]  # relative files only


def _named_paths(text: str) -> set:
    """Tokens of code spans and code blocks that look like a path of this repository (first part one of its
    top-level entries); placeholders (``<run>``) and shell variables are not paths."""
    paths = set()
    for span in CODE.findall(text):
        for token in re.split(r'[\s=(),;:\'"\[\]]+', span.strip('`')):
            token = token.rstrip('.')
            if PATH.match(token) and token.split('/')[0] in TOP and not re.search(r'[<>$]', token):
                paths.add(token)
    return paths


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_exist(doc):
    text = doc.read_text()
    missing = [t for t in _links(text) if not (doc.parent / t.split('#')[0]).exists()]
    assert not missing, f'{doc.name} links to missing files: {missing}'


def _anchors(markdown: str) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens (code blocks hold no headings)."""
    text = re.sub(r'```.*?```', '', markdown, flags=re.S)
    return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-')
            for h in re.findall(r'^#{1,6} (.+)$', text, re.M)}


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_anchors_of_links_exist(doc):
    """``file.md#section`` and ``#section`` links name a heading of that file (files not there yet are the test
    above's)."""
    text, broken = doc.read_text(), []
    for target in LINK.findall(text):
        if '#' not in target or re.match(r'^[a-z]+:', target):
            continue
        name, anchor = target.split('#', 1)
        path = doc.parent / name if name else doc
        if path.suffix == '.md' and path.exists() and anchor not in _anchors(path.read_text()):
            broken.append(target)
    assert not broken, f'{doc.name} links to missing sections: {broken}'


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_paths_exist(doc):
    missing = sorted(p for p in _named_paths(doc.read_text()) if not glob.glob(str(REPO / p)))
    assert not missing, f'{doc.name} names paths that do not exist: {missing}'


def test_every_doc_is_linked_from_the_readme():
    linked = {os.path.normpath(t.split('#')[0]) for t in _links((REPO / 'README.md').read_text())}
    unlinked = [p.name for p in DOCS[1:] if os.path.join('docs', p.name) not in linked]
    assert not unlinked, f'docs not linked from README.md: {unlinked}'


def test_the_checks_see_links_and_paths():
    """The extractors find what they must (so that an empty result above means 'all exist', not 'none seen')."""
    text = 'See [a](docs/a.md#x), ![f](energy/figures/f.png), [w](https://x.org) and `python cifar10/train.py ' \
           '--config cifar10/quickstart.yml`; ```\nls output/train/<run>/ models/neuron.py\n```'
    assert _links(text) == ['docs/a.md#x', 'energy/figures/f.png']
    assert _named_paths(text) == {'cifar10/train.py', 'cifar10/quickstart.yml', 'models/neuron.py'}
    assert _anchors('# A b\n## CIFAR-10 / CIFAR-100 (one GPU)\n```\n# not a heading\n```\n### How: run.json') == \
        {'a-b', 'cifar-10--cifar-100-one-gpu', 'how-runjson'}


def test_no_file_refers_outside_the_repository():
    found = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS]
        for name in files:
            path = os.path.join(folder, name)
            if name in SKIPPED_DIRS or name.endswith(BINARY) or os.path.samefile(path, __file__):  # .git: a worktree's
                continue
            with open(path, errors='replace') as f:
                for number, line in enumerate(f, 1):
                    if OUTSIDE.search(line):
                        found.append(f'{os.path.relpath(path, REPO)}:{number}: {line.strip()[:100]}')
    assert not found, 'references outside the repository:\n' + '\n'.join(found)


def test_ci_runs_the_readme_test_command_character_for_character():
    """CI (``.ci/run``) runs exactly the README's test command, so that a fresh clone passes what the README says."""
    command = [line for line in (REPO / '.ci' / 'run').read_text().splitlines() if line.strip()][-1]
    assert command.endswith('.venv/bin/python -m pytest -q')
    assert command in (REPO / 'README.md').read_text().splitlines()

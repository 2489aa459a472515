"""``test.py --results-file out.csv|out.json``: one row per evaluated checkpoint, appended, as timm's
``validate.py --results-file`` (which writes one file per call; here the rows of every call accumulate, so that one
file compares checkpoints).

The format follows the extension. The file is checked before the evaluation (a wrong extension, a folder, a file
that is not a results file of that format are refused, so no evaluation is lost to a bad path), and rewritten whole
through ``utils.run.atomic`` after it: a kill or a full disk leaves the previous rows intact. A CSV whose columns differ
from the row's gets the union of both (earlier rows leave the new columns empty).
"""
import csv
import io
import json
import os
from typing import List

from utils.errors import UserError, writing
from utils.run.atomic import replace_atomically

FORMATS = ('.csv', '.json')
COLUMNS = ['checkpoint', 'model', 'dataset', 'top1', 'top5', 'loss', 'samples', 'param_count', 'img_per_sec',
           'use_ema', 'sha256']


def _format(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UserError(f'--results-file {path}: the extension picks the format, .csv or .json (got '
                        f'{ext or "none"}).\nFix: --results-file results.csv (or results.json).')
    return ext


def read_rows(path: str) -> List[dict]:
    """The rows already in ``path`` (none when it does not exist), or a UserError when it is not such a file."""
    ext = _format(path)
    if not os.path.exists(path):
        return []
    if not os.path.isfile(path):
        raise UserError(f'--results-file {path} is not a file: name a .csv or .json file (new or written by test.py).')
    try:
        with open(path, newline='') as f:
            if ext == '.json':
                rows = json.load(f)
                if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                    raise ValueError('not a list of rows')
                return rows
            return list(csv.DictReader(f))
    except (ValueError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f'--results-file {path} exists but is not a results file of test.py ({e}): the rows would '
                        f'be appended to something else.\nFix: name a new file, or move that one away.') from None


def check_results_file(path: str) -> None:
    """Refuse a results file that cannot take the row, before anything is evaluated."""
    read_rows(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f'--results-file {path}: {folder} is a file, not a folder.')


def append_row(path: str, row: dict) -> None:
    """Append ``row`` to ``path`` (the earlier rows kept), atomically."""
    rows = read_rows(path) + [row]

    def write(tmp):
        if path.lower().endswith('.json'):
            text = json.dumps(rows, indent=2)
        else:
            columns = list(COLUMNS)
            for r in rows:
                columns += [k for k in r if k not in columns]
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator='\n')
            writer.writeheader()
            writer.writerows(rows)
            text = buffer.getvalue()
        with open(tmp, 'w', newline='') as f:
            f.write(text)
    with writing(path, 'The metrics printed above were not added to it; its earlier rows are unchanged.'):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        replace_atomically(path, write)

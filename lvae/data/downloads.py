"""Download the paper's test sets into the dataset folders that :mod:`lvae.data.paths` resolves.

:func:`find_or_download` (what ``evaluate_bound(model, 'kodak')`` and the scripts call) fetches a known test set
the first time it is asked for, like torchvision's ``download=True``. By hand::

    python -m lvae.datasets download kodak tecnick-rgb-1200 clic2022-test [--root DIR]
    python -m lvae.datasets list

Each download is checked: the sha256 of a file when :data:`DOWNLOADS` states one, then the number of images,
that every image decodes (:func:`lvae.data.images.check_images`) and that its size is one the dataset has.
Files go through :func:`lvae.checkpoint.remote.fetch` (temporary file, tqdm progress bar, then rename), so an
interrupted download leaves no half file behind; files already present are not fetched again. A new dataset
folder is filled as ``<folder>.partial`` and renamed once verified, so an interrupted download never looks like
a complete dataset.
"""
import os
import shutil
import sys
import tempfile
import zipfile
from PIL import Image
from tqdm.auto import tqdm

from lvae.checkpoint.remote import DownloadError, fetch
from lvae.errors import first_line
from lvae.data.images import IMAGE_EXTENSIONS, check_images, list_images
from lvae.data.paths import dataset_path, how_to_set_paths

# name -> where it comes from and what a complete copy is. ``files``: (url, file name) pairs; ``archive``: a
# zip whose image members with ``member_filter`` in their path are the dataset (flattened into the folder).
# ``sha256``: {file or archive name: digest}, checked when given (none is stated here: they were not
# measured against the servers, and a guessed digest would only reject good files).
DOWNLOADS = {
    'kodak': {
        'files': [(f'http://r0k.us/graphics/kodak/kodak/kodim{i:02d}.png', f'kodim{i:02d}.png') for i in range(1, 25)],
        'count': 24, 'sizes': {(768, 512), (512, 768)}, 'sha256': {},
    },
    'tecnick-rgb-1200': {  # the zip the paper's authors evaluated on; its RGB 1200x1200 folder
        'archive': 'https://sourceforge.net/projects/testimages/files/OLD/OLD_SAMPLING/testimages.zip/download',
        'archive_name': 'testimages.zip', 'member_filter': '1200x1200',
        'count': 100, 'sizes': {(1200, 1200)}, 'sha256': {},
    },
    'clic2022-test': {
        'archive': 'https://storage.googleapis.com/clic2022_public/test_sets/image_test_30.zip',
        'archive_name': 'image_test_30.zip', 'member_filter': '',
        'count': 30, 'sizes': None, 'sha256': {},
    },
}


def expected_images(name):
    """How many images known test set ``name`` has (None for a name :data:`DOWNLOADS` does not know)."""
    return DOWNLOADS[name]['count'] if name in DOWNLOADS else None


def _extract_images(archive, folder, member_filter):
    """Image members of ``archive`` with ``member_filter`` in their path -> ``folder`` (flat); returns names."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.is_dir() and member_filter in m.filename
                       and m.filename.lower().endswith(IMAGE_EXTENSIONS) and '__MACOSX' not in m.filename]
            names = [os.path.basename(m.filename) for m in members]
            if len(set(names)) != len(names):
                raise DownloadError(f'{archive}: image names repeat across folders; cannot flatten')
            for m, name in zip(members, names):
                with zf.open(m) as src, _new_file(os.path.join(folder, name)) as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as e:
        raise DownloadError(f'{archive} is not a valid zip file ({e})') from None
    return names


def _new_file(path):
    """``path`` opened for writing as a new regular file: whatever is there (a file, a symbolic link planted in a
    shared folder) is removed first, and the open neither follows a link nor takes a file that appeared meanwhile."""
    if os.path.lexists(path):
        os.remove(path)
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644), 'wb')


def verify(name, folder):
    """Check that ``folder`` holds dataset ``name`` as :data:`DOWNLOADS` describes; raise DownloadError if not."""
    spec = DOWNLOADS[name]
    good, bad = check_images(list_images(folder))
    problems = [str(e) for e in bad]
    if len(good) + len(bad) != spec['count']:
        problems.append(f'{len(good) + len(bad)} image files, expected {spec["count"]}')
    if spec['sizes']:
        for path in good:
            with Image.open(path) as img:
                if img.size not in spec['sizes']:
                    problems.append(f'{path}: size {img.size[0]}x{img.size[1]}, expected one of '
                                    f'{", ".join(f"{w}x{h}" for w, h in sorted(spec["sizes"]))}')
    if problems:
        raise DownloadError(f'{name} in {folder} is not complete:\n  ' + '\n  '.join(problems))


def source_url(name):
    """Where dataset ``name`` is downloaded from (its archive, or its first file)."""
    spec = DOWNLOADS[name]
    return spec['archive'] if 'archive' in spec else spec['files'][0][0]


def download_dataset(name, root=None, progress=True):
    """Download dataset ``name`` into ``<root>/<name>`` (default: where :func:`lvae.data.paths.dataset_path`
    expects it), verify it, and return the folder."""
    if name not in DOWNLOADS:
        raise ValueError(f'no download source for {name!r}; downloadable: {", ".join(DOWNLOADS)}')
    spec = DOWNLOADS[name]
    folder = os.path.join(root, name) if root else dataset_path(name, must_exist=False)
    # a folder that exists already is completed in place; a new one appears only once it is complete
    work = folder if os.path.isdir(folder) else folder.rstrip(os.sep) + '.partial'
    made = not os.path.isdir(work)
    os.makedirs(work, exist_ok=True)
    try:
        _fill(name, spec, work, progress)
    except BaseException:
        if made and not os.listdir(work):  # nothing fetched (offline, say): nothing left behind
            os.rmdir(work)
        raise
    if work != folder:
        os.replace(work, folder)
    return folder


def _fill(name, spec, work, progress):
    """Fetch what ``work`` lacks of dataset ``name`` (its :data:`DOWNLOADS` ``spec``) and verify it."""
    if 'files' in spec:
        todo = [(url, f) for url, f in spec['files'] if not os.path.isfile(os.path.join(work, f))]
        for url, fname in tqdm(todo, desc=name, unit='file', disable=not progress):
            fetch(url, os.path.join(work, fname), spec['sha256'].get(fname), progress=False)
    elif len(list_images(work)) != spec['count']:
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            archive = os.path.join(tmp, spec['archive_name'])
            fetch(spec['archive'], archive, spec['sha256'].get(spec['archive_name']), progress=progress)
            _extract_images(archive, work, spec['member_filter'])
    verify(name, work)


def find_or_download(name_or_folder, progress=True):
    """The folder of a dataset name or folder path (:func:`lvae.data.paths.dataset_path`); a known test set that is
    not on this machine is downloaded first (:func:`download`). Raises FileNotFoundError with one line naming
    the URL and the folder to put the files in when that download fails (e.g. offline)."""
    try:
        return dataset_path(name_or_folder)
    except FileNotFoundError:
        name = os.fspath(name_or_folder)
        if name not in DOWNLOADS:
            raise
    folder = dataset_path(name, must_exist=False)
    print(f'{name} is not on this machine: downloading it into {folder}', file=sys.stderr)
    try:
        return download_dataset(name, progress=progress)
    except (DownloadError, OSError) as e:
        raise FileNotFoundError(f'dataset {name!r} is missing and its download failed ({first_line(e)}); fetch '
                                f'{source_url(name)} by hand and put its {DOWNLOADS[name]["count"]} images in '
                                f'{folder}, or where they are already: {how_to_set_paths()} (eval-var-rate.py '
                                f'--dataset_name FOLDER)') from None

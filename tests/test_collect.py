"""npfl_course.collect: LMS downloads (zips, loose notebooks, folders) -> submitted/."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import warnings
import zipfile
from pathlib import Path

import nbformat
import pytest
from tiny_course import tiny_course

from npfl_course.collect import DEFAULT_PATTERN, zip_collect
from npfl_course.course import STUDENT_ID_RULE, CourseError, generate_assignment, load_course


@pytest.fixture(scope="module")
def course_dir(tmp_path_factory) -> Path:
    directory = tiny_course(tmp_path_factory.mktemp("collect") / "course")
    ok, log = generate_assignment(load_course(directory), "tiny")
    assert ok, log
    return directory


@pytest.fixture
def course(course_dir, tmp_path):
    """A fresh copy of the generated course (collecting writes into it)."""
    import shutil

    return load_course(shutil.copytree(course_dir, tmp_path / "course"))


def _notebook(marker: str) -> str:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(f"# {marker}")]
    return nbformat.writes(notebook)


def _downloads(folder: Path) -> Path:
    folder.mkdir()
    with zipfile.ZipFile(folder / "s1.zip", "w") as archive:
        archive.writestr("tiny.ipynb", _notebook("s1"))
    with zipfile.ZipFile(folder / "s5_attempt2.zip", "w") as archive:
        archive.writestr("tiny/renamed by student.ipynb", _notebook("s5"))
        archive.writestr("__MACOSX/tiny/._renamed by student.ipynb", "junk")
    (folder / "s2_homework.ipynb").write_text(_notebook("s2"))
    (folder / "s3_folder").mkdir()
    (folder / "s3_folder" / "my work.ipynb").write_text(_notebook("s3"))
    (folder / "s4.pdf").write_bytes(b"%PDF-1.4")
    (folder / "__MACOSX").mkdir()
    (folder / "__MACOSX" / "._s1.zip").write_bytes(b"junk")
    (folder / "s6.zip").write_bytes(b"not a zip at all")
    return folder


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_zips_loose_notebooks_and_folders_are_collected(course, tmp_path):
    downloads = _downloads(tmp_path / "downloads")
    before = _digest(downloads)
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {
        "s1": ["tiny.ipynb"],
        "s2": ["tiny.ipynb"],
        "s3": ["tiny.ipynb"],
        "s5": ["tiny.ipynb"],
    }
    for student in collected.students:
        path = course.root / "submitted" / student / "tiny" / "tiny.ipynb"
        assert nbformat.read(path, 4).cells[0].source == f"# {student}"
    # One line per entry, in the order of the entries' names.
    assert collected.skipped == ["s4.pdf: not a notebook", "s6.zip: not a readable archive"]
    assert _digest(downloads) == before  # the download folder is left as it was


def test_collecting_again_needs_force(course, tmp_path):
    downloads = _downloads(tmp_path / "downloads")
    zip_collect(course, "tiny", downloads)
    with pytest.raises(CourseError, match="--force"):
        zip_collect(course, "tiny", downloads)
    (downloads / "s2_homework.ipynb").write_text(_notebook("s2 again"))
    zip_collect(course, "tiny", downloads, force=True)
    path = course.root / "submitted" / "s2" / "tiny" / "tiny.ipynb"
    assert nbformat.read(path, 4).cells[0].source == "# s2 again"


def test_a_pattern_for_moodle_style_names(course, tmp_path):
    downloads = tmp_path / "moodle"
    folder = downloads / "Jan Novak_12345_assignsubmission_file_"
    folder.mkdir(parents=True)
    (folder / "ukol.ipynb").write_text(_notebook("jan"))
    (downloads / "unrelated.ipynb").write_text(_notebook("x"))
    pattern = r".*_(?P<student_id>\d+)_assignsubmission"
    collected = zip_collect(course, "tiny", downloads, pattern=pattern)
    assert collected.students == {"12345": ["tiny.ipynb"]}
    assert collected.skipped == ["unrelated.ipynb: no student id in 'unrelated.ipynb'"]


def test_two_notebooks_keep_their_names(course, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "s7.zip", "w") as archive:
        archive.writestr("tiny.ipynb", _notebook("main"))
        archive.writestr("scratch.ipynb", _notebook("other"))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s7": ["scratch.ipynb", "tiny.ipynb"]}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"directory": "missing"}, "is not a folder"),
        ({"pattern": r"(?P<id>\w+)"}, "student_id"),
        ({"assignment": "nope"}, "no released notebooks of 'nope'"),
    ],
)
def test_bad_input_is_reported(course, tmp_path, arguments, message):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    call = {"assignment": "tiny", "directory": downloads, **arguments}
    if arguments.get("directory") == "missing":
        call["directory"] = tmp_path / "missing"
    with pytest.raises(CourseError, match=message):
        zip_collect(course, call.pop("assignment"), call.pop("directory"), **call)


def test_default_pattern():
    import re

    for name, student in [("s1", "s1"), ("s2_homework", "s2"), ("x-9 extra", "x-9")]:
        assert re.match(DEFAULT_PATTERN, name).group("student_id") == student


# A hostile or careless class: every bad entry is skipped with a reason, the rest is
# collected (npfl_course.collect's module doc).
# ----------------------------------------------------------------------------------

MiB = 1 << 20


def _info(name: str, mode: int | None = None, date=(2024, 1, 1, 0, 0, 0)) -> zipfile.ZipInfo:
    """A zip member; ``mode``: the Unix mode (with the file type) the archive records."""
    info = zipfile.ZipInfo(name, date_time=date)
    info.compress_type = zipfile.ZIP_DEFLATED
    if mode is not None:
        info.external_attr = mode << 16
    return info


def _zip(path: Path, members) -> Path:
    """Writes a zip of ``members``: (name or ZipInfo, text or bytes)."""
    with warnings.catch_warnings():  # duplicate names are on purpose
        warnings.simplefilter("ignore")
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in members:
                archive.writestr(name, data)
    return path


def _tar(path: Path, members) -> Path:
    """Writes a .tar.gz of ``members``: (TarInfo, bytes or None)."""
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tar_info(name: str, kind=tarfile.REGTYPE, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, target, 1_700_000_000
    return info


def _source(course, student: str, name: str = "tiny.ipynb") -> str:
    path = course.root / "submitted" / student / "tiny" / name
    return nbformat.read(path, 4).cells[0].source


def _tree(folder: Path, exclude: tuple[str, ...] = ()) -> str:
    """A digest of everything under ``folder`` (names as bytes, modes, link targets,
    contents), without following links; top-level names in ``exclude`` left out."""
    digest = hashlib.sha256()
    root = os.fsencode(folder)
    for current, folders, files in os.walk(root):
        if current == root:
            folders[:] = [f for f in folders if os.fsdecode(f) not in exclude]
        for name in sorted(folders + files):
            path = os.path.join(current, name)
            info = os.lstat(path)
            digest.update(os.path.relpath(path, root) + b"\0" + oct(info.st_mode).encode())
            if stat.S_ISLNK(info.st_mode):
                digest.update(os.readlink(path))
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as file:
                    digest.update(file.read())
    return digest.hexdigest()


def _safe_tree(folder: Path) -> None:
    """Only plain files 0644 and folders 0755 (with the test's umask 022) under ``folder``."""
    for current, folders, files in os.walk(folder):
        for name in folders + files:
            info = os.lstat(os.path.join(current, name))
            assert stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode), name
            expected = 0o755 if stat.S_ISDIR(info.st_mode) else 0o644
            assert stat.S_IMODE(info.st_mode) == expected, (name, oct(info.st_mode))


@pytest.fixture
def downloads(tmp_path) -> Path:
    folder = tmp_path / "downloads"
    folder.mkdir()
    return folder


@pytest.fixture(autouse=True)
def _umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_zip_slip_and_absolute_paths_are_refused(course, downloads, tmp_path):
    _zip(
        downloads / "s1.zip",
        [
            ("../../evil.ipynb", _notebook("evil")),
            ("/tmp/evil.ipynb", _notebook("evil")),
            ("..\\..\\evil.ipynb", _notebook("evil")),
            ("C:/evil.ipynb", _notebook("evil")),
            ("tiny.ipynb", _notebook("s1")),
        ],
    )
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s1": ["tiny.ipynb"]} and _source(course, "s1") == "# s1"
    reason = "an absolute path or one climbing out with '..'"
    assert collected.skipped == [
        f"s1.zip/../../evil.ipynb: {reason}",
        f"s1.zip//tmp/evil.ipynb: {reason}",
        f"s1.zip/..\\..\\evil.ipynb: {reason}",
        f"s1.zip/C:/evil.ipynb: {reason}",
    ]
    assert not [path for path in tmp_path.rglob("*evil*")]


def test_a_file_and_a_folder_with_one_name(course, downloads):
    _zip(
        downloads / "s1.zip",
        [("tiny.ipynb", _notebook("s1")), ("tiny.ipynb/extra.ipynb", _notebook("x"))],
    )
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s1": ["tiny.ipynb"]} and _source(course, "s1") == "# s1"
    assert collected.skipped == [
        "s1.zip/tiny.ipynb/extra.ipynb: its folder 'tiny.ipynb' is also a file in the archive"
    ]


def test_a_name_too_long_for_a_file(course, downloads):
    long = "x" * 300 + ".ipynb"
    _zip(downloads / "s1.zip", [(long, _notebook("long")), ("other.ipynb", _notebook("s1"))])
    collected = zip_collect(course, "tiny", downloads)
    # Not renamed to tiny.ipynb: with two notebooks, which one is the homework is unknown.
    assert collected.students == {"s1": ["other.ipynb"]}
    [line] = collected.skipped
    assert line.startswith("s1.zip/xxxx") and "..." in line and len(line) < 160
    assert line.endswith("x.ipynb: the name is longer than 255 bytes")


def test_zip_names_that_are_not_utf8(course, downloads):
    # Flagged UTF-8 but not: the archive cannot be listed.
    _zip(downloads / "s1.zip", [("tiny_\u00e9.ipynb", _notebook("s1"))])
    raw = (downloads / "s1.zip").read_bytes()
    (downloads / "s1.zip").write_bytes(raw.replace(b"\xc3\xa9", b"\xff\xfe"))
    # No UTF-8 flag: the zip spec's cp437, as Python's zipfile reads it.
    _zip(downloads / "s2.zip", [("NovXk.ipynb", _notebook("cp437")), ("tiny.ipynb", "{}")])
    raw = (downloads / "s2.zip").read_bytes()
    (downloads / "s2.zip").write_bytes(raw.replace(b"NovXk", b"Nov\xa0k"))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s2": ["Nov\u00e1k.ipynb", "tiny.ipynb"]}
    assert _source(course, "s2", "Nov\u00e1k.ipynb") == "# cp437"
    [line] = collected.skipped
    assert line.startswith("s1.zip: not a readable archive (") and "utf-8" in line


def test_two_notebooks_with_one_name_the_newer_is_collected(course, downloads):
    _zip(
        downloads / "s1.zip",
        [
            (_info("tiny.ipynb", date=(2024, 5, 2, 10, 0, 0)), _notebook("s1 new")),
            (_info("old/tiny.ipynb", date=(2023, 5, 1, 10, 0, 0)), _notebook("s1 old")),
        ],
    )
    _zip(
        downloads / "s2.zip", [("tiny.ipynb", _notebook("first")), ("tiny.ipynb", _notebook("s2"))]
    )
    (downloads / "s3").mkdir()
    (downloads / "s3" / "tiny.ipynb").write_text(_notebook("s3 loose, old"))
    os.utime(downloads / "s3" / "tiny.ipynb", (1_000_000_000, 1_000_000_000))
    _zip(downloads / "s3" / "work.zip", [("tiny.ipynb", _notebook("s3"))])
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {student: ["tiny.ipynb"] for student in ("s1", "s2", "s3")}
    for student, source in [("s1", "# s1 new"), ("s2", "# s2"), ("s3", "# s3")]:
        assert _source(course, student) == source
    instead = "another notebook named 'tiny.ipynb' is collected instead"
    assert collected.skipped == [
        f"s1.zip/old/tiny.ipynb: {instead}: s1.zip/tiny.ipynb (newer)",
        "s2.zip/tiny.ipynb: in the archive twice; the later one (as old, and read later) is "
        "collected",
        f"s3/tiny.ipynb: {instead}: s3/work.zip/tiny.ipynb (newer)",
    ]


def test_modes_from_the_archive_are_not_kept(course, downloads):
    _zip(
        downloads / "s1.zip",
        [
            (_info("tiny.ipynb", mode=0o104755), _notebook("setuid")),
            (_info("other.ipynb", mode=0o102777), _notebook("setgid, world-writable")),
        ],
    )
    os.umask(0)  # even so: 0644 and 0755, never more
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s1": ["other.ipynb", "tiny.ipynb"]}
    _safe_tree(course.root / "submitted")


def test_zip_bombs_are_stopped(course, downloads, monkeypatch):
    from npfl_course import collect

    monkeypatch.setattr(collect, "MAX_ENTRY_BYTES", 1 * MiB)
    monkeypatch.setattr(collect, "MAX_STUDENT_BYTES", int(1.5 * MiB))
    monkeypatch.setattr(collect, "RATIO_FREE_BYTES", 64 * 1024)
    zeros = bytes(3 * MiB)
    _zip(downloads / "ratio.zip", [("tiny.ipynb", zeros[: MiB // 2]), ("b.ipynb", "{}")])
    with zipfile.ZipFile(downloads / "big.zip", "w") as archive:
        with archive.open(_info("tiny.ipynb"), "w", force_zip64=True) as member:
            for _ in range(3):  # written in chunks, as a real bomb would be
                member.write(zeros[:MiB])
    stored = _info("tiny.ipynb")
    stored.compress_type = zipfile.ZIP_STORED
    _zip(downloads / "huge.zip", [(stored, os.urandom(MiB + 1))])
    many = [(f"n{i}.ipynb", os.urandom(MiB // 2)) for i in range(4)]
    _zip(downloads / "student.zip", many)
    _zip(downloads / "nested.zip", [("inner.zip", (downloads / "big.zip").read_bytes())])
    _zip(downloads / "ok.zip", [("tiny.ipynb", _notebook("ok"))])
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"ok": ["tiny.ipynb"], "ratio": ["b.ipynb"]}
    assert collected.skipped == [
        "big.zip/tiny.ipynb: compressed more than 200:1 (a zip bomb?); not extracted",
        "huge.zip/tiny.ipynb: larger than 1 MiB, the limit for one file; not extracted",
        "nested.zip/inner.zip: an archive inside an archive; not unpacked",
        "ratio.zip/tiny.ipynb: compressed more than 200:1 (a zip bomb?); not extracted",
        "student.zip/n3.ipynb: the entry unpacks to more than 1.5 MiB, the limit for one "
        "student; nothing of 'student.zip' collected",
    ]


def test_a_zip_header_that_lies_about_the_size(course, downloads):
    _zip(downloads / "s1.zip", [("tiny.ipynb", bytes(2 * MiB))])
    raw = bytearray((downloads / "s1.zip").read_bytes())
    for signature, offset in [(b"PK\x03\x04", 22), (b"PK\x01\x02", 24)]:  # uncompressed size
        start = raw.index(signature) + offset
        raw[start : start + 4] = (100).to_bytes(4, "little")
    (downloads / "s1.zip").write_bytes(bytes(raw))
    # A compressed size of 2 GiB for 2 KiB of data: the ratio is checked against the bytes
    # up to the next header, not against the header's claim.
    _zip(downloads / "s2.zip", [("tiny.ipynb", bytes(2 * MiB)), ("other.ipynb", "{}")])
    raw = bytearray((downloads / "s2.zip").read_bytes())
    for signature, offset in [(b"PK\x03\x04", 18), (b"PK\x01\x02", 20)]:  # compressed size
        start = raw.index(signature) + offset
        raw[start : start + 4] = (1 << 31).to_bytes(4, "little")
    (downloads / "s2.zip").write_bytes(bytes(raw))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s2": ["other.ipynb"]}
    assert collected.skipped[0].startswith("s1.zip/tiny.ipynb: damaged, cannot be read (Bad CRC")
    assert collected.skipped[1:] == [
        "s2.zip/tiny.ipynb: compressed more than 200:1 (a zip bomb?); not extracted"
    ]


def test_the_copy_stops_at_the_bound_whatever_the_header_says():
    from npfl_course.collect import CHUNK_BYTES, _copy_bounded, _TooLarge

    class Endless(io.RawIOBase):
        read_bytes = 0

        def readinto(self, buffer) -> int:
            buffer[:] = bytes(len(buffer))
            self.read_bytes += len(buffer)
            return len(buffer)

    source, target = Endless(), io.BytesIO()
    with pytest.raises(_TooLarge):
        _copy_bounded(source, target, 3 * MiB + 5)
    assert source.read_bytes == 3 * MiB + 6 and len(target.getvalue()) <= 3 * MiB + 5
    assert CHUNK_BYTES <= MiB  # read in chunks, never whole


def test_tar_bombs_are_stopped(course, downloads, monkeypatch):
    from npfl_course import collect

    monkeypatch.setattr(collect, "MAX_STUDENT_BYTES", 2 * MiB)
    _tar(
        downloads / "bomb.tar.gz",
        [(_tar_info("data.bin"), bytes(3 * MiB)), (_tar_info("tiny.ipynb"), b"{}")],
    )
    pax = tarfile.TarInfo("pax")
    pax.type, pax.size = tarfile.XHDTYPE, 1 << 30  # read whole by tarfile: 1 GiB
    with gzip.open(downloads / "pax.tar.gz", "wb") as file:
        file.write(pax.tobuf(tarfile.USTAR_FORMAT) + bytes(3 * MiB))
    _tar(
        downloads / "big.tar",
        [(_tar_info("data.bin"), os.urandom(3 * MiB)), (_tar_info("tiny.ipynb"), b"{}")],
    )
    _tar(downloads / "bignb.tar", [(_tar_info("tiny.ipynb"), os.urandom(3 * MiB))])
    _tar(downloads / "ok.tgz", [(_tar_info("work/hw.ipynb"), _notebook("ok").encode())])
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"ok": ["tiny.ipynb"]} and _source(course, "ok") == "# ok"
    assert collected.skipped == [
        "big.tar: unpacks to more than 2 MiB, the limit for one student; nothing collected",
        "bignb.tar/tiny.ipynb: the entry unpacks to more than 2 MiB, the limit for one "
        "student; nothing of 'bignb.tar' collected",
        "bomb.tar.gz: compressed more than 200:1 (an archive bomb?); nothing collected",
        "pax.tar.gz: compressed more than 200:1 (an archive bomb?); nothing collected",
    ]


def test_the_run_has_a_bound_too(course, downloads, monkeypatch):
    from npfl_course import collect

    monkeypatch.setattr(collect, "MAX_RUN_BYTES", 1 * MiB)
    for student in ("s1", "s2", "s3"):
        (downloads / f"{student}.ipynb").write_bytes(os.urandom(MiB // 2))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s1": ["tiny.ipynb"], "s2": ["tiny.ipynb"]}
    assert collected.skipped == [
        "s3.ipynb: the limit of 1 MiB for one run is reached; nothing collected"
    ]


def test_links_are_never_followed(course, downloads, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.ipynb").write_text(_notebook("SECRET"))
    os.symlink(outside / "secret.ipynb", downloads / "s1.ipynb")
    os.symlink(outside, downloads / "s2")
    (downloads / "s3").mkdir()
    (downloads / "s3" / "tiny.ipynb").write_text(_notebook("s3"))
    os.symlink(outside / "secret.ipynb", downloads / "s3" / "link.ipynb")
    os.symlink(outside, downloads / "s3" / "linked folder")
    _zip(
        downloads / "s4.zip", [(_info("tiny.ipynb", mode=0o120777), str(outside / "secret.ipynb"))]
    )
    _tar(
        downloads / "s5.tar.gz",
        [
            (_tar_info("tiny.ipynb", tarfile.SYMTYPE, str(outside / "secret.ipynb")), None),
            (_tar_info("hard.ipynb", tarfile.LNKTYPE, str(outside / "secret.ipynb")), None),
            (_tar_info("device.ipynb", tarfile.CHRTYPE), None),
            (_tar_info("pipe.ipynb", tarfile.FIFOTYPE), None),
            (_tar_info("work/hw.ipynb"), _notebook("s5").encode()),
        ],
    )
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s3": ["tiny.ipynb"], "s5": ["tiny.ipynb"]}
    assert _source(course, "s3") == "# s3" and _source(course, "s5") == "# s5"
    link, special = (
        "a link; links are not followed",
        "not a regular file (a device, pipe or socket)",
    )
    assert collected.skipped == [
        "s1.ipynb: a symbolic link; links are not followed",
        "s2: a symbolic link; links are not followed",
        f"s3/link.ipynb: {link}",
        f"s3/linked folder: {link}",
        f"s4.zip/tiny.ipynb: {link}",
        f"s5.tar.gz/tiny.ipynb: {link}",
        f"s5.tar.gz/hard.ipynb: {link}",
        f"s5.tar.gz/device.ipynb: {special}",
        f"s5.tar.gz/pipe.ipynb: {special}",
    ]
    submitted = course.root / "submitted"
    assert not any(b"SECRET" in path.read_bytes() for path in submitted.rglob("*.ipynb"))
    _safe_tree(submitted)


def test_names_that_are_not_utf8(course, downloads):
    folder = os.path.join(os.fsencode(downloads), b"Nov\xe1k_1")
    os.mkdir(folder)
    with open(os.path.join(folder, b"tiny.ipynb"), "w") as file:
        file.write(_notebook("cp1250"))
    with open(os.path.join(os.fsencode(downloads), b"s2_\xe9.ipynb"), "w") as file:
        file.write(_notebook("s2"))
    (downloads / "s3").mkdir()
    (downloads / "s3" / "tiny.ipynb").write_text(_notebook("s3"))
    with open(os.path.join(os.fsencode(downloads / "s3"), b"Nov\xe1k.ipynb"), "w") as file:
        file.write(_notebook("s3 other"))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s3": ["tiny.ipynb"]} and _source(course, "s3") == "# s3"
    not_utf8 = (
        "the name is not valid UTF-8 (an export in another encoding?); rename it to collect it"
    )
    assert collected.skipped == [
        f"Nov\\xe1k_1: {not_utf8}",
        f"s2_\\xe9.ipynb: {not_utf8}",
        "s3/Nov\\xe1k.ipynb: the name is not valid UTF-8",
    ]
    for line in collected.skipped:
        line.encode("utf-8")  # printable anywhere: no surrogate escapes


def test_invalid_student_ids_are_skipped(course, downloads):
    (downloads / "honest.ipynb").write_text(_notebook("honest"))
    (downloads / "[h]onest_victim.ipynb").write_text(_notebook("attacker"))
    (downloads / "\x1b[2J\x1b[31mred_x.ipynb").write_text(_notebook("escape"))
    (downloads / "-rf_x.ipynb").write_text(_notebook("dash"))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"honest": ["tiny.ipynb"]}
    assert _source(course, "honest") == "# honest"
    rule = STUDENT_ID_RULE
    assert collected.skipped == [
        "\\x1b[2J\\x1b[31mred_x.ipynb: '\\x1b[2J\\x1b[31mred' is not a valid student id: "
        f"it contains '\\x1b', '['; allowed are {rule}",
        f"-rf_x.ipynb: '-rf' is not a valid student id: it starts with '-'; allowed are {rule}",
        f"[h]onest_victim.ipynb: '[h]onest' is not a valid student id: it contains '[', ']'; "
        f"allowed are {rule}",
    ]
    assert all(line.isprintable() for line in collected.skipped)
    # With a pattern that lets spaces in: refused too.
    pattern = r"(?P<student_id>[^_]+)_"
    downloads2 = downloads.parent / "downloads2"
    downloads2.mkdir()
    (downloads2 / "a b_x.ipynb").write_text(_notebook("space"))
    collected = zip_collect(course, "tiny", downloads2, pattern=pattern, force=True)
    assert collected.students == {}
    assert collected.skipped == [
        f"a b_x.ipynb: 'a b' is not a valid student id: it contains ' '; allowed are {rule}"
    ]


def test_entries_sharing_a_student_id_are_ambiguous(course, downloads):
    for folder in ("Jan Novak_123", "Jan Svoboda_456"):
        (downloads / folder).mkdir()
        (downloads / folder / "ukol.ipynb").write_text(_notebook(folder))
    _zip(downloads / "s1.zip", [("tiny.ipynb", _notebook("zip"))])
    (downloads / "s1_tiny.ipynb").write_text(_notebook("loose"))
    (downloads / "s2.ipynb").write_text(_notebook("s2"))
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s2": ["tiny.ipynb"]}
    fix = (
        "none of them collected (change --pattern so that it tells them apart, "
        "or put one student's files into one folder)"
    )
    assert collected.skipped == [
        f"student id 'Jan': 2 entries give it: 'Jan Novak_123', 'Jan Svoboda_456'; {fix}",
        f"student id 's1': 2 entries give it: 's1.zip', 's1_tiny.ipynb'; {fix}",
    ]
    assert sorted(path.name for path in (course.root / "submitted").iterdir()) == ["s2"]
    moodle = r".*_(?P<student_id>\d+)"  # the fix
    collected = zip_collect(course, "tiny", downloads, pattern=moodle, force=True)
    assert collected.students == {"123": ["tiny.ipynb"], "456": ["tiny.ipynb"]}
    assert _source(course, "456") == "# Jan Svoboda_456"


def test_terminal_escapes_in_member_names_are_escaped(course, downloads):
    _zip(
        downloads / "s1.zip",
        [("\x1b]0;pwned\x07.pdf", "x"), ("evil\u202etxt.ipynb", "{}"), ("tiny.ipynb", "{}")],
    )
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s1": ["tiny.ipynb"]}
    assert collected.skipped == [
        "s1.zip/\\x1b]0;pwned\\x07.pdf: not a notebook",
        "s1.zip/evil\\u202etxt.ipynb: the name contains control or invisible characters",
    ]


def test_a_whole_class_with_hostile_entries(course, downloads, tmp_path, monkeypatch):
    from npfl_course import collect

    monkeypatch.setattr(collect, "MAX_ENTRY_BYTES", 1 * MiB)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.ipynb").write_text(_notebook("SECRET"))
    honest = {}
    for number in range(20):
        student = f"student{number:02d}"
        honest[student] = _notebook(student)
        form = number % 5
        if form == 0:
            _zip(downloads / f"{student}.zip", [("hw/tiny.ipynb", honest[student])])
        elif form == 1:
            (downloads / f"{student}_homework.ipynb").write_text(honest[student])
        elif form == 2:
            (downloads / f"{student}_files").mkdir()
            (downloads / f"{student}_files" / "moje.ipynb").write_text(honest[student])
        elif form == 3:
            data = honest[student].encode()
            _tar(downloads / f"{student}.tar.gz", [(_tar_info("tiny.ipynb"), data)])
        else:
            (downloads / student).mkdir()
            _zip(downloads / student / "upload.zip", [("tiny.ipynb", honest[student])])
    # Honest, but with hostile members: collected, the members skipped or made safe.
    honest["setuid"] = _notebook("setuid")
    _zip(downloads / "setuid.zip", [(_info("tiny.ipynb", mode=0o104755), honest["setuid"])])
    honest["slip"] = _notebook("slip")
    _zip(
        downloads / "slip.zip",
        [
            ("../../evil.ipynb", honest["slip"]),
            ("/etc/evil.ipynb", "x"),
            ("tiny.ipynb", honest["slip"]),
        ],
    )
    hostile = {  # top-level names: nothing of them collected
        "bomb.zip": lambda path: _zip(path, [("tiny.ipynb", bytes(2 * MiB))]),
        "link.ipynb": lambda path: os.symlink(outside / "secret.ipynb", path),
        "linked": lambda path: os.symlink(outside, path),
        "zlink.zip": lambda path: _zip(path, [(_info("tiny.ipynb", mode=0o120777), "/etc/passwd")]),
        "nested.zip": lambda path: _zip(path, [("inner.zip", b"PK")]),
        "[h]onest.ipynb": lambda path: path.write_text(_notebook("attacker")),
        "\x1b[31mred.ipynb": lambda path: path.write_text(_notebook("escape")),
        "Jan Novak_1": lambda path: (path.mkdir(), (path / "a.ipynb").write_text("{}")),
        "Jan Svoboda_2": lambda path: (path.mkdir(), (path / "b.ipynb").write_text("{}")),
        "broken.zip": lambda path: path.write_bytes(b"PK\x03\x04 not really"),
    }
    for name, make in hostile.items():
        make(downloads / name)
    os.mkdir(os.path.join(os.fsencode(downloads), b"Nov\xe1k_3"))
    course_before, downloads_before = _tree(course.root, exclude=("submitted",)), _tree(downloads)

    collected = zip_collect(course, "tiny", downloads)

    assert collected.students == {student: ["tiny.ipynb"] for student in honest}
    for student, notebook in honest.items():
        assert (course.root / "submitted" / student / "tiny" / "tiny.ipynb").read_text() == notebook
    for name in [*hostile, "Nov\udce1k_3"]:
        shown = name.replace("\x1b", "\\x1b").replace("\udce1", "\\xe1")
        assert any(line.startswith(shown) or f"'{shown}'" in line for line in collected.skipped), (
            name
        )
    assert any(line.startswith("slip.zip/../../evil.ipynb: ") for line in collected.skipped)
    assert all(line.isprintable() for line in collected.skipped)
    assert _tree(course.root, exclude=("submitted",)) == course_before
    assert _tree(downloads) == downloads_before
    _safe_tree(course.root / "submitted")
    assert not [path for path in tmp_path.rglob("*evil*")]


def test_long_reports_and_large_listings_are_bounded(course, downloads, monkeypatch):
    from npfl_course import collect

    _zip(downloads / "s1.zip", [(f"file{i:02d}.pdf", "x") for i in range(30)] + [("a.ipynb", "{}")])
    (downloads / "s2").mkdir()
    (downloads / "s2" / "a" / "b" / "c").mkdir(parents=True)
    (downloads / "s2" / "a" / "b" / "c" / "tiny.ipynb").write_text("{}")
    _zip(downloads / "s3.zip", [(f"n{i}.ipynb", "{}") for i in range(6)])
    monkeypatch.setattr(collect, "MAX_DEPTH", 2)
    monkeypatch.setattr(collect, "MAX_FILES_PER_ENTRY", 31)
    collected = zip_collect(course, "tiny", downloads)
    assert collected.students == {"s1": ["tiny.ipynb"], "s3": [f"n{i}.ipynb" for i in range(6)]}
    assert collected.skipped[:19] == [f"s1.zip/file{i:02d}.pdf: not a notebook" for i in range(19)]
    assert collected.skipped[19:] == [
        "s1.zip: 11 more lines like these left out",
        "s2: folders nested more than 2 deep; nothing collected",
    ]
    monkeypatch.setattr(collect, "MAX_FILES_PER_ENTRY", 5)
    collected = zip_collect(course, "tiny", downloads, force=True)
    assert collected.students == {}
    assert collected.skipped[-1] == "s3.zip: more than 5 files; nothing collected"


def test_nothing_is_written_when_a_submission_exists(course, downloads):
    (downloads / "s1.ipynb").write_text(_notebook("s1"))
    zip_collect(course, "tiny", downloads)
    (downloads / "s2.ipynb").write_text(_notebook("s2"))
    with pytest.raises(CourseError, match=r"1 submission\(s\) of 'tiny' exist already \(s1\)"):
        zip_collect(course, "tiny", downloads)
    assert not (course.root / "submitted" / "s2").exists()
    collected = zip_collect(course, "tiny", downloads, force=True)
    assert collected.students == {"s1": ["tiny.ipynb"], "s2": ["tiny.ipynb"]}
    assert collected.sources == {"s1": "s1.ipynb", "s2": "s2.ipynb"}
    assert sorted(os.listdir(course.root / "submitted" / "s1")) == ["tiny"]  # no leftovers

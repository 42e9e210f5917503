"""The PathInfoService contract (tvix store/src/pathinfoservice/tests/mod.rs, spec §4.4).

Every test runs against every backend in ``PATH_INFO_BACKENDS``; none of them names a backend.
"""

from __future__ import annotations

import hashlib
import threading

from fixtures import CASTORE_NODE_HELLOWORLD, DUMMY_PATH, PATH_INFO

from nix_compat.store_path import StorePath
from tvix_store.path_info import PathInfo
from tvix_store.pathinfoservice import PathInfoService


def _info(n: int) -> PathInfo:
    digest = hashlib.sha1(b"path %d" % n).digest()
    return PathInfo(
        store_path=StorePath(digest, f"p{n}"),
        node=CASTORE_NODE_HELLOWORLD,
        nar_size=128 + n,
        nar_sha256=hashlib.sha256(b"%d" % n).digest(),
        references=(DUMMY_PATH,),
    )


def test_get_unknown_none(path_info_service: PathInfoService) -> None:
    """get() of an unknown digest is None."""
    assert path_info_service.get(DUMMY_PATH.digest) is None


def test_put_get_list(path_info_service: PathInfoService) -> None:
    """put returns PATH_INFO, get returns it, list returns exactly it."""
    assert path_info_service.put(PATH_INFO) == PATH_INFO
    assert path_info_service.get(DUMMY_PATH.digest) == PATH_INFO
    assert list(path_info_service.list()) == [PATH_INFO]


def test_put_many(path_info_service: PathInfoService) -> None:
    """put_many stores each PathInfo (a later one of the same path wins) and returns them in order."""
    infos = [_info(n) for n in range(5)]
    newer = infos[1].replace(nar_size=7)
    assert path_info_service.put_many([*infos, newer]) == [*infos, newer]
    assert path_info_service.get(infos[1].store_path.digest) == newer
    for info in infos[:1] + infos[2:]:
        assert path_info_service.get(info.store_path.digest) == info
    assert len(list(path_info_service.list())) == 5
    assert path_info_service.put_many([]) == []


def test_list_empty(path_info_service: PathInfoService) -> None:
    """list of an empty service yields nothing."""
    assert list(path_info_service.list()) == []


def test_put_overwrites(path_info_service: PathInfoService) -> None:
    """A second put for the same store path replaces the first."""
    path_info_service.put(PATH_INFO)
    newer = PATH_INFO.replace(nar_size=42, references=())
    assert path_info_service.put(newer) == newer
    assert path_info_service.get(DUMMY_PATH.digest) == newer
    assert list(path_info_service.list()) == [newer]


def test_many_entries(path_info_service: PathInfoService) -> None:
    """Many PathInfos (more than a list batch) are each found, and list yields each once."""
    infos = [_info(n) for n in range(700)]
    for info in infos:
        path_info_service.put(info)
    for info in infos[::37]:
        assert path_info_service.get(info.store_path.digest) == info
    listed = list(path_info_service.list())
    assert len(listed) == len(infos)
    assert {i.store_path for i in listed} == {i.store_path for i in infos}
    assert sorted(listed, key=lambda i: i.store_path.digest) == sorted(
        infos, key=lambda i: i.store_path.digest
    )


def test_list_while_putting(path_info_service: PathInfoService) -> None:
    """A put between two items of a running list neither breaks the list nor blocks."""
    for n in range(600):
        path_info_service.put(_info(n))
    stream = path_info_service.list()
    first = next(stream)
    path_info_service.put(_info(10_000))
    rest = list(stream)
    names = {i.store_path.name for i in [first, *rest]}
    assert {f"p{n}" for n in range(600)} <= names


def test_concurrent_threads(path_info_service: PathInfoService) -> None:
    """Puts and gets from several threads at once all land."""
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for n in range(t * 100, t * 100 + 40):
                info = _info(n)
                path_info_service.put(info)
                assert path_info_service.get(info.store_path.digest) == info
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    assert len(list(path_info_service.list())) == 6 * 40

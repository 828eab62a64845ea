"""The Ray runner's pieces that need no cluster: row spans, the parts store, the index, the spec, the options."""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import pytest

from guardreasoner_vl import InvalidInputError
from guardreasoner_vl.backends import FakeBackend
from guardreasoner_vl.batch import _parse_row, _scan
from guardreasoner_vl.cli import main
from guardreasoner_vl.distributed import GuardSpec
from guardreasoner_vl.distributed.moderate import _drop_for_retry, _scan_parquet, _small_row_groups, format_of
from guardreasoner_vl.distributed.parts import OutputStore, PartsIndex, is_uri, ordered_rows, part_name
from guardreasoner_vl.errors import MissingDependencyError
from guardreasoner_vl.jsonl_store import StoreLockedError, encode_line


def test_scan_spans_point_at_each_rows_line(tmp_path: Path) -> None:
    lines = [b'{"id": 1, "text": "a"}', b"", b'\xef\xbb\xbf{"id": "b", "text": "caf\xc3\xa9"}\r', b"{bad", b'{"id": 3}']
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines))  # no newline at the end
    spans: list[tuple[int, int]] = []
    keys, malformed = _scan(path, skip_invalid=True, max_line_bytes=1 << 20, spans=spans)
    assert keys == ["1", "b", "line:4", "3"] and list(malformed) == ["line:4"]
    data = path.read_bytes()
    rows = [_parse_row(data[o : o + n].rstrip(b"\r\n"))[0] for o, n in spans]
    assert [r["id"] if r else None for r in rows] == [1, "b", None, 3]


def test_images_travel_with_their_row_as_bytes(tmp_path: Path) -> None:
    """The read stage turns image paths into the file's bytes (so an actor on another machine gets the image);
    what it cannot read within the limits keeps its path for the guard to refuse with its own message."""
    from dataclasses import replace

    from guardreasoner_vl.distributed.moderate import _block_tables
    from guardreasoner_vl.distributed.pool import Source
    from guardreasoner_vl.inputs import DEFAULT_LIMITS

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"\x89PNG fake bytes")
    (tmp_path / "imgs" / "big.png").write_bytes(b"x" * 100)
    rows = [
        {"id": "a", "text": "t", "image": "imgs/a.png"},
        {"id": "b", "image": ["imgs/a.png", "data:image/png;base64,AAAA"]},
        {"id": "c", "image": "imgs/missing.png"},
        {"id": "d", "image": "imgs/big.png"},
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows) + "oops\n", encoding="utf-8")
    spans: list[tuple[int, int]] = []
    keys, malformed = _scan(src, skip_invalid=True, max_line_bytes=1 << 20, spans=spans)
    [table] = _block_tables(list(range(len(keys))), keys, spans, malformed, 8)
    limits = replace(DEFAULT_LIMITS, max_image_bytes=50)
    source = Source(kind="jsonl", path=str(src), image_base=str(tmp_path), limits=limits)
    read = [pickle.loads(p) for p in source.read(table).column("payload").to_pylist()]
    items = {row_id: item for row_id, item in read}
    assert items["a"] == {"text": "t", "image": b"\x89PNG fake bytes", "response": None}
    assert items["b"]["image"] == [b"\x89PNG fake bytes", "data:image/png;base64,AAAA"]
    assert items["c"]["image"] == str(tmp_path / "imgs" / "missing.png")  # the guard says "not found"
    assert items["d"]["image"] == str(tmp_path / "imgs" / "big.png")  # over max_image_bytes: not read
    assert items["line:5"].line == 5 and "not valid JSON" in items["line:5"].error


def test_parquet_scan_uses_the_same_id_rules(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", None, "a", "c"], "text": ["x"] * 4}), tmp_path / "in.parquet")
    with pytest.raises(InvalidInputError) as info:
        _scan_parquet(tmp_path / "in.parquet", skip_invalid=False)
    assert "line 2: 'id' must be a non-empty string or an integer, got None" in str(info.value)
    assert "line 3: duplicate id 'a' (first on line 1)" in str(info.value)
    keys, malformed = _scan_parquet(tmp_path / "in.parquet", skip_invalid=True)
    assert keys == ["a", "line:2", "line:3", "c"] and malformed["line:3"].line == 3
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "noid.parquet")
    with pytest.raises(InvalidInputError, match="no 'id' column"):
        _scan_parquet(tmp_path / "noid.parquet", skip_invalid=True)


def test_large_parquet_row_groups_are_copied_into_block_sized_ones(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(100)), "text": [f"t{i}" for i in range(100)]})
    pq.write_table(table, tmp_path / "big.parquet")  # one group of 100 rows
    with _small_row_groups(tmp_path / "big.parquet", 8) as copy:
        parquet = pq.ParquetFile(copy)
        assert copy != tmp_path / "big.parquet" and parquet.num_row_groups == 13
        assert parquet.read().equals(table)
    assert not copy.exists()  # removed afterwards
    with _small_row_groups(tmp_path / "big.parquet", 32) as same:  # 100 <= 4 x 32: read as it is
        assert same == tmp_path / "big.parquet"


def rows(*ids: object, status: str = "ok") -> bytes:
    return b"".join(encode_line({"id": i, "status": status, "flagged": False}) for i in ids)


def test_parts_commit_atomically_and_one_writer_at_a_time(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    with OutputStore(out) as store:
        store.open()
        name = part_name(0, ["a", "b"])
        assert name == part_name(0, ["a", "b"]) != part_name(0, ["a", "c"])  # named after its ids
        store.commit(name, rows("a", "b"))
        store.commit(name, rows("a", "b"))  # the same block again overwrites it
        assert store.names() == [name]
        (tmp_path / "out.jsonl.parts" / f".{name}.123.abc.tmp").write_bytes(b'{"id": "a"')  # a killed commit
        with pytest.raises(StoreLockedError):
            OutputStore(out).open()
    with OutputStore(out) as again:
        again.open()
        assert not list((tmp_path / "out.jsonl.parts").glob("*.tmp"))  # removed on the next start
        assert again.read(name) == rows("a", "b")
        again.write_final([b"x\n", b"y\n"])
    assert out.read_bytes() == b"x\ny\n"
    with OutputStore(out) as fresh:
        fresh.open(fresh=True)
        assert fresh.names() == [] and not out.exists()


def test_uri_outputs_go_through_pyarrow_filesystems(tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/deep/out.jsonl"
    assert is_uri(uri) and not is_uri(str(tmp_path / "x")) and format_of(uri) == "jsonl"
    with OutputStore(uri) as store:
        store.open()
        store.commit(part_name(3, ["k"]), rows("k"))
        store.write_final([rows("k")])
        assert store.names() == [part_name(3, ["k"])] and store.final_exists()
    assert (tmp_path / "deep" / "out.jsonl").read_bytes() == rows("k")
    assert (tmp_path / "deep" / "out.jsonl.parts" / part_name(3, ["k"])).is_file()


def test_index_checks_the_input_and_resolves_rows_found_twice(tmp_path: Path) -> None:
    keys = ["a", "b", "c", "d", "e"]
    index_of = {k: i for i, k in enumerate(keys)}
    with OutputStore(tmp_path / "out.jsonl") as store:
        store.open()
        store.commit(part_name(0, ["a", "c"]), rows("a", "c"))
        store.commit(part_name(1, ["b", "e"]), rows("b", "e"))
        store.commit(part_name(3, ["d"]), rows("d", status="engine_error"))
        store.commit(part_name(3, ["d", "e"]), rows("d", "e"))  # d retried and e left twice by a crash
        index = PartsIndex.build(store, index_of)
        assert index.duplicates == 2 and index.statuses["d"] == "ok"
        assert index.winner["d"] == part_name(3, ["d", "e"]) and index.winner["e"] == part_name(1, ["b", "e"])
        ordered = [json.loads(line)["id"] for line in ordered_rows(store, index, keys)]
        assert ordered == keys  # input order across interleaved parts, each id once
        store.commit(part_name(9, ["zz"]), rows("zz"))
        with pytest.raises(InvalidInputError, match="'zz' is not in the input; this output belongs to another"):
            PartsIndex.build(store, index_of)


def test_retry_rewrites_parts_without_the_rows_to_judge_again(tmp_path: Path) -> None:
    keys = ["a", "b", "c"]
    index_of = {k: i for i, k in enumerate(keys)}
    with OutputStore(tmp_path / "out.jsonl") as store:
        store.open()
        data = encode_line({"id": "a", "status": "ok"}) + encode_line({"id": "b", "status": "engine_error"})
        store.commit(part_name(0, ["a", "b"]), data)
        store.commit(part_name(2, ["c"]), encode_line({"id": "c", "status": "engine_error"}))
        assert _drop_for_retry(store, PartsIndex.build(store, index_of), index_of) == 2
        assert store.names() == [part_name(0, ["a"])]
        assert set(PartsIndex.build(store, index_of).winner) == {"a"}


def test_guard_spec_travels_and_builds_the_guard_it_names() -> None:
    spec = GuardSpec("some/model", backend=FakeBackend, family="vl", batch_size=3, max_new_tokens=5)
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and spec.batch_size == 3 and spec.backend == "FakeBackend"
    guard = copy.build()
    assert guard.backend.name == "fake" and guard.params.max_new_tokens == 5
    assert spec.with_options(allow_urls=True).limits.allow_urls and not spec.limits.allow_urls
    with pytest.raises(InvalidInputError, match="GuardSpec got 'batchsize'"):
        GuardSpec(batchsize=3)
    with pytest.raises(InvalidInputError, match="an engine object does not travel"):
        GuardSpec(backend=FakeBackend())


def test_ray_options_need_ray_and_the_ray_extra_is_named(tmp_path: Path, monkeypatch, capsys) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "a"}\n', encoding="utf-8")
    args = ["moderate-file", str(src), "-o", str(tmp_path / "o.jsonl"), "--backend", "fake", "--replicas", "2"]
    assert main(args) == 2
    assert "--replicas only apply with --ray" in capsys.readouterr().err
    assert main(["eval", "--predictions", str(tmp_path), "--ray"]) == 2
    assert "--ray runs a guard: it goes with --data" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    from guardreasoner_vl.distributed.pool import require_ray

    with pytest.raises(MissingDependencyError, match=r'pip install "guardreasoner-vl\[ray\]"'):
        require_ray()
